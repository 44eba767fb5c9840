"""Settings for the welcome-mail service, read from the environment (12-factor)."""

import ssl
from pathlib import Path

import django
import environ
from django.core.exceptions import ImproperlyConfigured

from project.redis_transport import transport_for

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()

# --- Core -------------------------------------------------------------------

DEBUG = env.bool("DJANGO_DEBUG", default=False)
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set. Set it, or set DJANGO_DEBUG=1 for a "
            "development-only key."
        )
    SECRET_KEY = "django-insecure-development-key-never-use-in-production"

ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1"])
SITE_URL = env.str("SITE_URL", default="http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_celery_results",
    "anymail",
    "users",
    "mailer",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # A view that lost its database connection answers 503 with Retry-After.
    "users.unavailable.DatabaseUnavailableMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Security ---------------------------------------------------------------

# Behind a TLS-terminating proxy that sets X-Forwarded-Proto (and strips any
# a client sent): trust it for request.is_secure() and redirect http to https.
SECURE_PROXY = env.bool("DJANGO_SECURE_PROXY", default=False)
if SECURE_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=SECURE_PROXY)
SESSION_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", default=not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = env.int(
    "DJANGO_SECURE_HSTS_SECONDS", default=0 if DEBUG else 365 * 86400
)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool(
    "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True
)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=True)
# Activation links carry their token in the path: no Referer leaves the site.
SECURE_REFERRER_POLICY = "same-origin"
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])
# Proxies in front of the app that append to X-Forwarded-For; 0 trusts none and
# rate limits key on REMOTE_ADDR (a client can write any X-Forwarded-For).
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)

# --- Database ---------------------------------------------------------------

DATABASES = {
    "default": env.db_url(
        "DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
    ),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(exist_ok=True)
    # The web process and the worker write the same file: WAL lets readers
    # and one writer overlap, IMMEDIATE avoids lock upgrades that fail fast.
    options = DATABASES["default"].setdefault("OPTIONS", {})
    options.setdefault("timeout", 20)  # DATABASE_URL=sqlite:///...?timeout=N
    options.update(
        {
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # A file, not memory: the suite's worker processes share it.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
# Persistent connections in web and worker processes (see mailer/connections.py
# for the worker); a health check before reuse catches a server that went away.
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DB_CONN_MAX_AGE", 60))
DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Accounts ---------------------------------------------------------------

AUTH_USER_MODEL = "users.User"
PASSWORD_HASHERS = [
    "users.hashers.Argon2idPasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {
        "NAME": "django.contrib.auth.password_validation."
        "UserAttributeSimilarityValidator",
        "OPTIONS": {"user_attributes": ("email",)},
    },
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
ACCOUNT_ACTIVATION_MAX_AGE = env.int("ACCOUNT_ACTIVATION_MAX_AGE", default=3 * 86400)
REGISTRATION_MAX_BODY_BYTES = 16 * 1024

# --- Internationalisation and static files ----------------------------------

# Pages follow the request's language (the django_language cookie, then
# Accept-Language); mails follow the one stored on the user and the outbox row.
# LANGUAGE_CODE is one of LANGUAGES: the fallback for anything else.
LANGUAGE_CODE = "en"
LANGUAGES = [
    ("en", "English"),
    ("de", "Deutsch"),
    ("es", "Español"),
]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- Email ------------------------------------------------------------------

# Django's SMTP backend with a check before DATA that the attempt still holds
# its row (mailer/smtp.py): a worker resumed after a freeze sends no copy.
_mail_backend = env.str("EMAIL_BACKEND", default="mailer.smtp.EmailBackend")
_smtp_options = {
    "host": env.str("EMAIL_HOST", default="127.0.0.1"),
    "port": env.int("EMAIL_PORT", default=1025),
    "username": env.str("EMAIL_HOST_USER", default=""),
    "password": env.str("EMAIL_HOST_PASSWORD", default=""),
    "use_tls": env.bool("EMAIL_USE_TLS", default=False),
    "use_ssl": env.bool("EMAIL_USE_SSL", default=False),
    # Django's default is no timeout: one stalled relay would hold a worker forever.
    "timeout": env.float("EMAIL_TIMEOUT", default=10.0),
}
# Django 6.1 reads mail from MAILERS and warns on every EMAIL_* setting; 5.2
# knows only EMAIL_*. The same environment variables configure both
# (mailer/mailers.py is the other place that tells them apart).
if django.VERSION >= (6, 1):
    # A backend other than SMTP (console, locmem) refuses SMTP options.
    _smtp = _mail_backend.endswith("smtp.EmailBackend")
    MAILERS = {
        "default": {
            "BACKEND": _mail_backend,
            "OPTIONS": _smtp_options if _smtp else {},
        }
    }
else:
    EMAIL_BACKEND = _mail_backend
    EMAIL_HOST = _smtp_options["host"]
    EMAIL_PORT = _smtp_options["port"]
    EMAIL_HOST_USER = _smtp_options["username"]
    EMAIL_HOST_PASSWORD = _smtp_options["password"]
    EMAIL_USE_TLS = _smtp_options["use_tls"]
    EMAIL_USE_SSL = _smtp_options["use_ssl"]
    EMAIL_TIMEOUT = _smtp_options["timeout"]

DEFAULT_FROM_EMAIL = env.str(
    "DEFAULT_FROM_EMAIL", default="Welcome <no-reply@example.com>"
)

# --- ESP (django-anymail) ---------------------------------------------------

# EMAIL_BACKEND=anymail.backends.postmark.EmailBackend (or another anymail
# backend) sends through an ESP's HTTP API instead of SMTP. Its bounce and
# complaint webhooks are served under /anymail/ only when
# ANYMAIL_WEBHOOK_SECRET (user:password, sent as basic auth) is set.
ANYMAIL = {
    "WEBHOOK_SECRET": env.str("ANYMAIL_WEBHOOK_SECRET", default="") or None,
    # Like EMAIL_TIMEOUT for SMTP: well below the Redis visibility timeout.
    "REQUESTS_TIMEOUT": _smtp_options["timeout"],
    "POSTMARK_SERVER_TOKEN": env.str("POSTMARK_SERVER_TOKEN", default=""),
    "POSTMARK_API_URL": env.str(
        "POSTMARK_API_URL", default="https://api.postmarkapp.com/"
    ),
}

# --- Mailer -----------------------------------------------------------------

MAILER_MAX_RETRIES = env.int("MAILER_MAX_RETRIES", default=8)
MAILER_RETRY_BACKOFF = env.float("MAILER_RETRY_BACKOFF", default=30.0)
MAILER_RETRY_BACKOFF_MAX = env.float("MAILER_RETRY_BACKOFF_MAX", default=600.0)
# How long a pending row's message may sit in Redis, held by no worker, before
# the sweeper publishes it again (a message lost with a Redis that kept no
# data, a retry publish dropped while Redis was down). Rows a worker holds
# live on MAILER_LEASE instead; this is the backstop.
MAILER_STALE_AFTER = env.float("MAILER_STALE_AFTER", default=300.0)
MAILER_SWEEP_INTERVAL = env.float("MAILER_SWEEP_INTERVAL", default=60.0)
# A worker's hold on the rows of the messages it has taken and the attempts it
# runs, on the database's clock, renewed every MAILER_HEARTBEAT_INTERVAL by
# each worker process (mailer/lifeline.py). A worker that dies or freezes
# stops renewing; within MAILER_LEASE its rows are another worker's.
MAILER_LEASE = env.float("MAILER_LEASE", default=10.0)
MAILER_HEARTBEAT_INTERVAL = env.float("MAILER_HEARTBEAT_INTERVAL", default=2.0)
# Seconds between probes (connect, EHLO, MAIL FROM, RCPT TO, RSET) of a relay
# that is down; one worker probes at a time, and a relay that fails again
# right after coming back is probed less often, up to
# MAILER_RELAY_PROBE_INTERVAL_MAX. A probe is one short session: every 2 s
# it costs the relay little, and a relay that is back is found within a beat.
MAILER_RELAY_PROBE_INTERVAL = env.float("MAILER_RELAY_PROBE_INTERVAL", default=2.0)
MAILER_RELAY_PROBE_INTERVAL_MAX = env.float(
    "MAILER_RELAY_PROBE_INTERVAL_MAX", default=60.0
)
# The relay's budget, shared by every worker process and thread through Redis
# (mailer/budget.py): at most this many open SMTP connections (Postfix allows
# 50 per client by default, shared relays fewer), and, when set, at most this
# many mails per second. Below both, limits learned from the relay's throttle
# replies apply. Read raw: a nonsense value is a system check error
# (mailer.E003/E004), not a crash here.
MAILER_RELAY_MAX_CONNECTIONS = env.str("MAILER_RELAY_MAX_CONNECTIONS", default="8")
MAILER_RELAY_RATE = env.str("MAILER_RELAY_RATE", default="")
# Hard limit on one send attempt: past it a worker stops renewing the
# attempt's lease, so a hung attempt's row goes to another worker.
MAILER_SEND_TIME_LIMIT = env.float("MAILER_SEND_TIME_LIMIT", default=120.0)
# Up to this many send tasks that are ready together share one claim, SMTP
# session, mark, result write and event publish (mailer/batching.py). Threads
# pool only; 0 or 1 (the default) keeps the per-mail path. A spike (issue 20):
# set --prefetch-multiplier so that concurrency x multiplier holds a batch
# per thread.
MAILER_BATCH_SIZE = env.int("MAILER_BATCH_SIZE", default=0)
# Milliseconds a send task may wait for a fuller batch while another batch
# runs; a task arriving while none runs starts at once.
MAILER_BATCH_LINGER_MS = env.float("MAILER_BATCH_LINGER_MS", default=0.0)
# Mails a person can trigger again and again: at most one per address per interval
# (seconds), kept in the database so it holds even when Redis rate limits fail open.
MAILER_NOTICE_INTERVAL = env.int("MAILER_NOTICE_INTERVAL", default=3600)
MAILER_ACTIVATION_RESEND_INTERVAL = env.int(
    "MAILER_ACTIVATION_RESEND_INTERVAL", default=900
)

# --- Redis: broker and rate-limit cache ----------------------------------------

# redis://[:password@]host:port/db, or rediss:// for TLS (certificate verified;
# REDIS_SSL_CA_CERTS names a CA bundle for a private CA).
REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
REDIS_SSL_CA_CERTS = env.str("REDIS_SSL_CA_CERTS", default="")
REDIS_TLS = REDIS_URL.startswith("rediss://")
_redis_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
if REDIS_SSL_CA_CERTS:
    _redis_ssl["ssl_ca_certs"] = REDIS_SSL_CA_CERTS

CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    # Shared by every web worker, so a limit holds across processes.
    "ratelimit": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "welcome",
        "OPTIONS": {
            # A frozen Redis costs a request half a second, then limits fail open.
            "socket_timeout": 0.5,
            "socket_connect_timeout": 0.5,
            **(_redis_ssl if REDIS_TLS else {}),
        },
    },
}

# --- Rate limits ----------------------------------------------------------------

# "N/s", "N/m", "N/h" or "N/d" per client IP or per address; empty turns one off.
RATELIMIT_REGISTER_IP = env.str("RATELIMIT_REGISTER_IP", default="60/h")
RATELIMIT_REGISTER_ADDRESS = env.str("RATELIMIT_REGISTER_ADDRESS", default="5/h")
RATELIMIT_RESEND_IP = env.str("RATELIMIT_RESEND_IP", default="20/h")
RATELIMIT_RESEND_ADDRESS = env.str("RATELIMIT_RESEND_ADDRESS", default="3/h")

# --- Celery -----------------------------------------------------------------

CELERY_BROKER_URL = REDIS_URL
# kombu's own Redis transports, sharing one redis-py client per connection
# pool instead of building one per command (project/redis_transport.py).
CELERY_BROKER_TRANSPORT = transport_for(REDIS_URL)
if REDIS_TLS:
    # Verified TLS for rediss://. Stock kombu falls back to unverified TLS;
    # the transport named above has no fallback, so this is what turns TLS on.
    CELERY_BROKER_USE_SSL = _redis_ssl
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Reconnect every second, not after up to 30 s, once Redis answers again.
CELERY_WORKER_CONSUMER = "project.worker:Consumer"
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # Longer than any countdown the send task asks for (backoff cap, time
    # limit); a message held longer than this is redelivered and runs twice.
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600),
    # Never let a frozen broker hang a web request or a worker.
    "socket_timeout": 5,
    "socket_connect_timeout": 3,
}
# A sentinel:// REDIS_URL needs the name of the master it watches.
REDIS_SENTINEL_MASTER = env.str("REDIS_SENTINEL_MASTER", default="")
if REDIS_SENTINEL_MASTER:
    CELERY_BROKER_TRANSPORT_OPTIONS["master_name"] = REDIS_SENTINEL_MASTER
# Publishing from a web request: give up fast, the outbox row and the
# sweeper cover a dispatch that did not reach the broker.
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_RESULT_BACKEND = (
    "mailer.result_backend:DatabaseBackend"  # django-db, one upsert per state
)
CELERY_RESULT_EXTENDED = True
CELERY_RESULT_EXPIRES = env.int("CELERY_RESULT_EXPIRES", default=7 * 86400)
# No STARTED result per task: the outbox row shows an attempt in flight
# (status "sending", its task id and attempt count, in the admin), and
# Flower still shows STARTED from the worker's task-started event. Saves one
# result write per mail (docs/BENCHMARKS.md).
CELERY_TASK_TRACK_STARTED = False
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_TIME_LIMIT = MAILER_SEND_TIME_LIMIT
if MAILER_BATCH_SIZE > 1:
    CELERY_TASK_ANNOTATIONS = {
        name: {"Strategy": "mailer.batching:strategy"}
        for name in (
            "mailer.tasks.send_welcome_email",
            "mailer.tasks.send_account_mail",
        )
    }
CELERY_TIMEZONE = TIME_ZONE
# Celery's Django fixup closes every database connection before and after each
# task unless this is set (celery/fixups/django.py); then it closes them every
# N tasks, and mailer/connections.py applies CONN_MAX_AGE and health checks.
# 0 restores a new connection per task.
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)

# --- Beat -------------------------------------------------------------------

CELERY_BEAT_SCHEDULE = {
    "sweep-stale-deliveries": {
        "task": "mailer.tasks.sweep_stale_deliveries",
        "schedule": MAILER_SWEEP_INTERVAL,
        # A sweep no worker picked up in time is superseded by the next one.
        "options": {"expires": MAILER_SWEEP_INTERVAL},
    },
}

# --- Health -----------------------------------------------------------------

# Seconds /healthz waits for the database and the broker before answering 503.
HEALTHZ_TIMEOUT = env.float("HEALTHZ_TIMEOUT", default=1.0)

# --- Metrics ----------------------------------------------------------------

# user:password for GET /metrics (Prometheus' basic_auth). Outside debug an
# unset login refuses every scrape; in debug it leaves /metrics open.
METRICS_BASIC_AUTH = env.str("METRICS_BASIC_AUTH", default="")
# PROMETHEUS_MULTIPROC_DIR (read by prometheus-client from the environment,
# see project/prometheus.py): one directory per host shared by web and worker
# processes, emptied before they start; unset, each process counts alone.

# --- Logging ----------------------------------------------------------------

LOG_LEVEL = env.str("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # Celery's INFO lines after each task ("... succeeded in 0.1s: 'sent'",
        # "... retry: Retry in 30s"): each send attempt's own line
        # (mailer.tasks) says the same, so a worker skips them (Celery looks
        # at the level once, at start) unless LOG_LEVEL is DEBUG. Its failure
        # lines (ERROR) and the "received" lines stay.
        "celery.app.trace": {"level": "DEBUG" if LOG_LEVEL == "DEBUG" else "WARNING"},
    },
}
