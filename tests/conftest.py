import functools
import os

import pytest
import redis
from django.db import connection

from mailer import budget, dispatch, relay
from mailer.pool import pool
from tests import services
from tests.support import RedisServer, SmtpServer, WorkerProcess
from tests.support.mail import use_smtp


@pytest.fixture(autouse=True)
def _fresh_smtp_connections():
    """No SMTP connection or relay state kept by one test leaks into the next."""
    yield
    pool.close_all()
    budget.forget()
    relay.forget_belief()
    dispatch.forget_broker_failure()


# Their views count rate limits in Redis: these run with the suite's own.
RATE_LIMITED_TESTS = {"users", "security"}


@pytest.fixture(autouse=True)
def _rate_limits_counted_in_redis(request):
    """Rate limits in tests/users and tests/security use the suite's redis-server."""
    if request.path.parent.name in RATE_LIMITED_TESTS:
        request.getfixturevalue("redis_server")


@pytest.fixture(autouse=True)
def _fresh_rate_limits():
    """Rate-limit counts of one test do not limit the next (when Redis runs)."""
    yield
    client = redis.Redis(
        port=services.REDIS_PORT,
        socket_connect_timeout=0.5,
        socket_timeout=1,  # a test may leave the server stopped or frozen
        retry=None,
    )
    try:
        keys = list(client.scan_iter(match="*:ratelimit:*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass  # the suite's redis-server is not running: nothing was counted
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_server():
    """The suite's own redis-server, on the port tests.services chose."""
    server = RedisServer(services.REDIS_PORT).start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def smtp_server():
    """The suite's own SMTP server (aiosmtpd), on the port tests.services chose."""
    server = SmtpServer(services.SMTP_PORT).start()
    yield server
    server.stop()


@pytest.fixture
def smtp(smtp_server):
    """The SMTP server's handler, emptied and unscripted for this test."""
    smtp_server.handler.reset()
    yield smtp_server.handler
    smtp_server.handler.reset()


@pytest.fixture
def real_smtp(settings):
    """Send through the project's SMTP backend instead of the test runner's locmem.

    Call it to change an option for the test: `real_smtp(port=1)`.
    """
    use_smtp(settings)
    return functools.partial(use_smtp, settings)


def database_url() -> str:
    """The test database as a URL a worker process can open."""
    conf = connection.settings_dict
    if conf["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{conf['NAME']}"
    auth = conf["USER"] or ""
    if conf["PASSWORD"]:
        auth += f":{conf['PASSWORD']}"
    host = conf["HOST"] or "127.0.0.1"
    port = conf["PORT"] or 5432
    return f"postgres://{auth}@{host}:{port}/{conf['NAME']}"


def worker_env(**overrides: str) -> dict[str, str]:
    """The environment of a worker process that shares the suite's services."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url(),
        MAILER_RETRY_BACKOFF="0.2",
        MAILER_RETRY_BACKOFF_MAX="1",
        MAILER_MAX_RETRIES="3",
    )
    env.update(overrides)
    return env


@pytest.fixture(scope="session")
def celery_worker(
    django_db_setup, django_db_blocker, redis_server, smtp_server, tmp_path_factory
):
    """One real Celery worker process for the integration tests.

    It outlives them, and the fault tests' stacks share its database: its
    lifeline is off so that it never rescues a row of theirs into its Redis.
    """
    with django_db_blocker.unblock():
        env = worker_env(MAILER_HEARTBEAT_INTERVAL="0")
    worker = WorkerProcess(
        env=env, log_path=tmp_path_factory.mktemp("worker") / "worker.log"
    ).start()
    yield worker
    worker.stop()


@pytest.fixture
def relay_budget(redis_server, settings, smtp, real_smtp):
    """The suite's Redis holds the relay budget; the SMTP server plays the relay."""
    settings.MAILER_RELAY_MAX_CONNECTIONS = "8"
    settings.MAILER_RELAY_RATE = ""
    budget.forget()
    yield smtp
    pool.close_all()
    budget.forget()


@pytest.fixture(scope="session", autouse=True)
def _stop_smtp_pool():
    """Stop the SMTP pool's reaper at the end, before the interpreter exits.

    Its thread would otherwise keep renewing slots on the suite's stopped
    redis-server and log into an already closed stream.
    """
    yield
    pool.stop()
