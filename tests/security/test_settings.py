"""Production settings, read by fresh processes from the environment as documented."""

import json
import os
import secrets
import subprocess
import sys

import pytest

from tests.support import ROOT

PRODUCTION = {
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    "DJANGO_ALLOWED_HOSTS": "welcome.example.com",
    "DJANGO_SECURE_PROXY": "1",
}


def run(args, *, env, timeout=60):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    clean.update(env)
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def settings_value(expression: str, *, env) -> object:
    """Evaluate `expression` over the settings of a fresh process as JSON."""
    code = (
        "import json, django\n"
        "from django.conf import settings\n"
        "django.setup()\n"
        f"print(json.dumps({expression}, default=repr))\n"
    )
    done = run(["-c", code], env={"DJANGO_SETTINGS_MODULE": "project.settings", **env})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_check_deploy_passes_with_the_documented_production_environment():
    done = run(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"], env=PRODUCTION
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout


def test_check_deploy_warns_without_the_proxy_flag_or_a_real_key():
    env = {**PRODUCTION, "DJANGO_SECRET_KEY": "short"}
    del env["DJANGO_SECURE_PROXY"]

    done = run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], env=env)

    assert done.returncode != 0
    assert "security.W008" in done.stderr  # no SSL redirect
    assert "security.W009" in done.stderr  # weak secret key


def test_debug_is_off_and_cookies_secure_by_default():
    values = settings_value(
        "[settings.DEBUG, settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE,"
        " settings.SECURE_HSTS_SECONDS, settings.SECURE_REFERRER_POLICY]",
        env={"DJANGO_SECRET_KEY": PRODUCTION["DJANGO_SECRET_KEY"]},
    )

    assert values == [False, True, True, 365 * 86400, "same-origin"]


def test_without_a_secret_key_and_debug_off_the_app_refuses_to_start():
    done = run(["manage.py", "check"], env={})

    assert done.returncode != 0
    assert "DJANGO_SECRET_KEY is not set" in done.stderr


def test_behind_the_proxy_http_is_redirected_and_https_gets_hsts():
    script = (
        "import json\n"
        "from django.test import Client\n"
        "client = Client(HTTP_HOST='welcome.example.com')\n"
        "plain = client.get('/register/', HTTP_X_FORWARDED_PROTO='http')\n"
        "tls = client.get('/register/', HTTP_X_FORWARDED_PROTO='https')\n"
        "print(json.dumps({'plain': [plain.status_code, plain.get('Location')],"
        " 'tls': [tls.status_code, dict(tls.headers),"
        " tls.cookies['csrftoken']['secure']]}))\n"
    )
    done = run(["manage.py", "shell", "-c", script], env=PRODUCTION)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])

    assert answer["plain"] == [301, "https://welcome.example.com/register/"]
    status, headers, csrf_cookie_secure = answer["tls"]
    assert status == 200
    assert headers["Strict-Transport-Security"] == (
        "max-age=31536000; includeSubDomains; preload"
    )
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert csrf_cookie_secure is True


def test_a_redis_url_with_password_and_tls_configures_broker_and_cache():
    env = {
        "DJANGO_SECRET_KEY": PRODUCTION["DJANGO_SECRET_KEY"],
        "REDIS_URL": "rediss://:s3cret@redis.example.com:6380/2",
        "REDIS_SSL_CA_CERTS": "/etc/ssl/private-ca.pem",
    }
    code = """
import json, ssl
import django
django.setup()
from django.core.cache import caches
from celery_app import app

pool = caches["ratelimit"]._cache._get_connection_pool(write=True)
broker = app.connection_for_write()
print(json.dumps({
    "broker_use_ssl": {k: int(v) if k == "ssl_cert_reqs" else v
                       for k, v in app.conf.broker_use_ssl.items()},
    "broker": [broker.transport_cls, broker.hostname, broker.port,
               broker.password, broker.virtual_host,
               int(broker.ssl["ssl_cert_reqs"])],
    "cache": [pool.connection_class.__name__,
              pool.connection_kwargs["password"],
              pool.connection_kwargs["host"], pool.connection_kwargs["db"],
              int(pool.connection_kwargs["ssl_cert_reqs"]),
              pool.connection_kwargs["ssl_ca_certs"]],
    "required": int(ssl.CERT_REQUIRED),
}))
"""
    done = run(["-c", code], env={"DJANGO_SETTINGS_MODULE": "project.settings", **env})
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    required = seen["required"]

    assert seen["broker_use_ssl"] == {
        "ssl_cert_reqs": required,
        "ssl_ca_certs": "/etc/ssl/private-ca.pem",
    }
    # kombu's rediss transport with a shared client (project/redis_transport.py);
    # TLS comes from broker_use_ssl, verified, as with the stock one.
    assert seen["broker"] == [
        "project.redis_transport:Transport",
        "redis.example.com",
        6380,
        "s3cret",
        "2",
        required,
    ]
    assert seen["cache"] == [
        "SSLConnection",
        "s3cret",
        "redis.example.com",
        2,
        required,
        "/etc/ssl/private-ca.pem",
    ]


def test_a_plain_redis_url_uses_no_tls():
    values = settings_value(
        "[getattr(settings, 'CELERY_BROKER_USE_SSL', None),"
        " sorted(settings.CACHES['ratelimit']['OPTIONS'])]",
        env={
            "DJANGO_SECRET_KEY": PRODUCTION["DJANGO_SECRET_KEY"],
            "REDIS_URL": "redis://:pw@127.0.0.1:6379/0",
        },
    )

    assert values == [None, ["socket_connect_timeout", "socket_timeout"]]


@pytest.mark.parametrize(
    "setting",
    ["accept_content", "task_serializer", "result_serializer", "result_accept_content"],
)
def test_celery_speaks_json_only(setting):
    from celery_app import app

    value = app.conf[setting]
    if setting == "result_accept_content" and value is None:
        value = app.conf.accept_content  # Celery's documented fallback
    assert value in (["json"], "json")
