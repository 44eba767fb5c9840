"""Settings of a peer's processes: the project's users app, the peer's mail queue.

BENCH_PEER picks the peer (post_office, django_mailer, celery_email) and
BENCH_TUNED=1 its configuration at 2 processes x 16 threads
(bench.peers.systems) instead of its documentation's. The project's `mailer`
app is left out: django-mailer's package is also called `mailer`.
"""

from project.settings import *  # noqa: F403
from project.settings import BASE_DIR, INSTALLED_APPS, TEMPLATES, env

PEER = env.str("BENCH_PEER")
TUNED = env.bool("BENCH_TUNED", default=False)
ROOT_URLCONF = "bench.peers.urls"
APP = {"post_office": "post_office", "django_mailer": "mailer"}.get(PEER)
INSTALLED_APPS = [
    a for a in INSTALLED_APPS if a not in ("mailer", "django.contrib.admin")
]
INSTALLED_APPS += [APP or "djcelery_email"]
TEMPLATES[0]["DIRS"] = [BASE_DIR / "templates", BASE_DIR / "mailer" / "templates"]
SMTP = "django.core.mail.backends.smtp.EmailBackend"
# Celery as its defaults have it (the project's CELERY_* options are not the peer's).
for _name in [n for n in globals() if n.startswith("CELERY_")]:
    del globals()[_name]
CELERY_BROKER_URL = env.str("REDIS_URL")

if PEER == "post_office":
    EMAIL_BACKEND = "post_office.EmailBackend"
    POST_OFFICE = {
        "BACKENDS": {"default": SMTP},
        "DEFAULT_PRIORITY": env.str("BENCH_PRIORITY", default="medium"),
        "CELERY_ENABLED": env.bool("BENCH_CELERY", default=False),
        "LOCK_FILE_NAME": env.str("BENCH_LOCK", default="post_office"),
        "MESSAGE_ID_ENABLED": True,
    }
    if TUNED:  # two processes (--processes 2) of 16 threads, 16 mails per thread
        POST_OFFICE.update(THREADS_PER_PROCESS=16, BATCH_SIZE=512)
elif PEER == "django_mailer":
    EMAIL_BACKEND = "mailer.backend.DbBackend"
    MAILER_EMAIL_BACKEND = SMTP
    MAILER_LOCK_PATH = env.str("BENCH_LOCK", default="send_mail")
    # runmailer polls every 30 s by default; tuned, ten times a second.
    MAILER_EMPTY_QUEUE_SLEEP = 0.1 if TUNED else 30
else:
    EMAIL_BACKEND = "djcelery_email.backends.CeleryEmailBackend"
    CELERY_EMAIL_BACKEND = SMTP
