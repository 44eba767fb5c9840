"""GET /healthz against real and failing dependencies."""

import json
import os
import signal
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from mailer.models import Delivery
from tests.conftest import worker_env
from tests.factories import DeliveryFactory
from tests.support import RedisServer, free_port, run_manage

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def private_redis():
    """A redis-server of this test's own, so stopping it disturbs no one."""
    server = RedisServer(free_port()).start()
    yield server
    if server.process is not None and server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.cleanup()


def test_healthz_answers_200_with_the_age_of_the_oldest_undelivered_mail(
    client, redis_server
):
    DeliveryFactory(status=Delivery.Status.SENT)
    waiting = DeliveryFactory()
    Delivery.objects.filter(pk=waiting.pk).update(
        created_at=timezone.now() - timedelta(seconds=90)
    )

    response = client.get("/healthz")

    assert response.status_code == 200
    body = response.json()
    assert (body["database"], body["broker"]) == ("ok", "ok")
    assert 90 <= body["oldest_undelivered_seconds"] < 150
    assert response["Cache-Control"].startswith("max-age=0")


def test_healthz_reports_no_undelivered_mail_as_null(client, redis_server):
    DeliveryFactory(status=Delivery.Status.SENT)

    body = client.get("/healthz").json()

    assert body == {
        "database": "ok",
        "broker": "ok",
        "oldest_undelivered_seconds": None,
    }


def test_healthz_answers_503_naming_a_stopped_broker_without_its_url(
    client, private_redis, settings
):
    private_redis.stop()
    settings.CELERY_BROKER_URL = f"redis://:s3cret@127.0.0.1:{private_redis.port}/0"

    started = time.monotonic()
    response = client.get("/healthz")
    elapsed = time.monotonic() - started

    assert response.status_code == 503
    body = response.json()
    assert (body["database"], body["broker"]) == ("ok", "unavailable")
    assert "s3cret" not in response.content.decode()
    assert str(private_redis.port) not in response.content.decode()
    assert elapsed < 5


def test_healthz_answers_503_within_its_timeout_when_the_broker_hangs(
    client, private_redis, settings
):
    settings.CELERY_BROKER_URL = private_redis.url
    settings.HEALTHZ_TIMEOUT = 1.0
    os.kill(private_redis.process.pid, signal.SIGSTOP)  # accepts, never answers

    started = time.monotonic()
    response = client.get("/healthz")
    elapsed = time.monotonic() - started

    assert response.status_code == 503
    assert response.json()["broker"] in {"timeout", "unavailable"}
    assert response.json()["database"] == "ok"
    assert elapsed < 4, f"/healthz took {elapsed:.1f}s"


def test_healthz_answers_503_naming_an_unreachable_database(redis_server):
    env = worker_env(
        DATABASE_URL=f"postgres://postgres:pw-s3cret@127.0.0.1:{free_port()}/x"
    )
    code = (
        "from django.test import Client; "
        "r = Client().get('/healthz', HTTP_HOST='localhost'); "
        "print(r.status_code, r.content.decode())"
    )

    result = run_manage("shell", "-c", code, env=env)

    status, _, content = result.stdout.strip().splitlines()[-1].partition(" ")
    assert status == "503", result.stdout + result.stderr
    body = json.loads(content)
    assert body == {
        "database": "unavailable",
        "broker": "ok",
        "oldest_undelivered_seconds": None,
    }
    assert "s3cret" not in result.stdout
