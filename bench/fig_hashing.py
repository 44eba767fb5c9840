"""Figure: what one password hash costs with each hasher, in this process."""

import time

from bench.harness import render, table_rows
from bench.stats import Runs

TEXT = """
## Password hashing

One `hasher.encode()` in the bench process, ms, median (min-max) of single
calls. It runs once per registration, inside the request.

| hasher | ms per hash |
| --- | --- |
$rows
"""


def run(bench) -> list:
    from django.contrib.auth.hashers import Argon2PasswordHasher, PBKDF2PasswordHasher

    from bench.load import PASSWORD
    from users.hashers import Argon2idPasswordHasher

    rows = []
    for label, hasher, repeat in [
        ("Argon2id, OWASP minimum (this project)", Argon2idPasswordHasher(), 20),
        ("Argon2, Django's defaults", Argon2PasswordHasher(), 8),
        ("PBKDF2, Django's default hasher", PBKDF2PasswordHasher(), 5),
    ]:
        samples = []
        for _ in range(repeat + 1):  # the first is a warm-up
            clock = time.perf_counter()
            hasher.encode(PASSWORD, hasher.salt())
            samples.append((time.perf_counter() - clock) * 1000)
        rows.append([label, Runs(samples[1:]).show()])
    return rows


def section(rows) -> tuple[str, list]:
    return render(TEXT, rows=table_rows(rows)), []
