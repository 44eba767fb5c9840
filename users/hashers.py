from django.contrib.auth.hashers import Argon2PasswordHasher


class Argon2idPasswordHasher(Argon2PasswordHasher):
    """Argon2id at OWASP's recommended minimum (m=19 MiB, t=2, p=1).

    Django's defaults (m=100 MiB, p=8) cost about six times as much per
    registration on a small machine for no gain the OWASP profile lacks.
    """

    time_cost = 2
    memory_cost = 19 * 1024
    parallelism = 1
