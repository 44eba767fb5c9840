"""GET /metrics: who may read it, and the outbox it reads at scrape time."""

import json
import time
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from mailer.models import Delivery
from tests.conftest import worker_env
from tests.factories import DeliveryFactory
from tests.monitoring.scrape import basic_auth, value
from tests.support import SilentSmtpServer, free_port, run_manage

pytestmark = pytest.mark.django_db(
    transaction=True
)  # the scrape reads on its own thread

LOGIN = "prometheus:s3cret-scrape"


@pytest.fixture(autouse=True)
def _metrics_login(settings):
    settings.METRICS_BASIC_AUTH = LOGIN


def scrape(client, login: str = LOGIN) -> str:
    response = client.get("/metrics", HTTP_AUTHORIZATION=basic_auth(login))
    assert response.status_code == 200, response.content
    return response.content.decode()


@pytest.mark.parametrize(
    "header",
    [
        None,
        basic_auth("prometheus:wrong"),
        basic_auth("someone:s3cret-scrape"),
        "Basic not-base64!",
        "Bearer s3cret-scrape",
    ],
)
def test_metrics_answer_401_without_the_right_login(client, header):
    extra = {"HTTP_AUTHORIZATION": header} if header else {}

    response = client.get("/metrics", **extra)

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith('Basic realm="metrics"')
    assert b"mailer_" not in response.content


def test_metrics_refuse_everyone_outside_debug_when_no_login_is_set(client, settings):
    settings.METRICS_BASIC_AUTH = ""
    settings.DEBUG = False

    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION=basic_auth(":")).status_code == 401


def test_metrics_are_open_in_debug_when_no_login_is_set(client, settings):
    settings.METRICS_BASIC_AUTH = ""
    settings.DEBUG = True

    assert client.get("/metrics").status_code == 200


def test_metrics_answer_in_prometheus_text_format_and_are_never_cached(client):
    response = client.get("/metrics", HTTP_AUTHORIZATION=basic_auth(LOGIN))

    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    assert response["Cache-Control"].startswith("max-age=0")
    strict = Client(enforce_csrf_checks=True)  # as a real client meets it
    answer = strict.post("/metrics", HTTP_AUTHORIZATION=basic_auth(LOGIN))
    assert answer.status_code == 405


def test_outbox_rows_are_counted_by_status_and_kind_with_zeros(client):
    DeliveryFactory.create_batch(3, status=Delivery.Status.SENT)
    DeliveryFactory(status=Delivery.Status.FAILED)
    DeliveryFactory(kind=Delivery.Kind.ACTIVATION)

    page = scrape(client)

    assert value(page, "mailer_outbox_rows", status="sent", kind="welcome") == 3
    assert value(page, "mailer_outbox_rows", status="failed", kind="welcome") == 1
    assert value(page, "mailer_outbox_rows", status="pending", kind="activation") == 1
    assert value(page, "mailer_outbox_rows", status="pending", kind="welcome") == 0
    assert value(page, "mailer_outbox_scrape_error") == 0


def test_oldest_undelivered_age_counts_pending_and_sending_rows_only(client):
    sent = DeliveryFactory(status=Delivery.Status.SENT)
    sending = DeliveryFactory(status=Delivery.Status.SENDING)
    now = timezone.now()
    Delivery.objects.filter(pk=sent.pk).update(created_at=now - timedelta(hours=5))
    Delivery.objects.filter(pk=sending.pk).update(created_at=now - timedelta(minutes=7))

    age = value(scrape(client), "mailer_outbox_oldest_undelivered_seconds")

    assert 420 <= age < 480


def test_oldest_undelivered_age_is_zero_when_everything_was_delivered(client):
    DeliveryFactory(status=Delivery.Status.SENT)

    assert value(scrape(client), "mailer_outbox_oldest_undelivered_seconds") == 0


def test_metrics_show_no_address_token_or_secret(client, settings):
    delivery = DeliveryFactory(user__email="grace@example.com")

    page = scrape(client)

    for secret in (
        "grace@example.com",
        delivery.task_id,
        delivery.message_id,
        settings.SECRET_KEY,
        "s3cret-scrape",
    ):
        assert secret not in page


def _scrape_in_a_process(database_url: str, timeout: float) -> tuple[str, float]:
    """Scrape /metrics in a fresh process whose database is `database_url`."""
    env = worker_env(
        DATABASE_URL=database_url,
        HEALTHZ_TIMEOUT=str(timeout),
        METRICS_BASIC_AUTH=LOGIN,
    )
    code = (
        "import json, time; from django.test import Client; "
        "from tests.monitoring.scrape import basic_auth; "
        "t = time.monotonic(); "
        f"r = Client().get('/metrics', HTTP_HOST='localhost', "
        f"HTTP_AUTHORIZATION=basic_auth({LOGIN!r})); "
        "print(json.dumps([r.status_code, time.monotonic() - t, r.content.decode()]))"
    )
    result = run_manage("shell", "-c", code, env=env, timeout=60)
    status, elapsed, page = json.loads(result.stdout.strip().splitlines()[-1])
    assert status == 200, result.stdout + result.stderr
    return page, elapsed


def test_a_scrape_with_the_database_refusing_reports_the_error_metric():
    url = f"postgres://postgres:pw-s3cret@127.0.0.1:{free_port()}/x"

    page, _ = _scrape_in_a_process(url, timeout=2.0)

    assert value(page, "mailer_outbox_scrape_error") == 1
    assert value(page, "mailer_outbox_oldest_undelivered_seconds") is None
    assert "pw-s3cret" not in page


def test_a_scrape_with_the_database_hanging_answers_within_healthz_timeout():
    frozen = SilentSmtpServer(free_port()).start()  # accepts, never answers
    try:
        started = time.monotonic()
        page, elapsed = _scrape_in_a_process(
            f"postgres://postgres@127.0.0.1:{frozen.port}/x", timeout=1.0
        )
        total = time.monotonic() - started
    finally:
        frozen.stop()

    assert value(page, "mailer_outbox_scrape_error") == 1
    assert value(page, "mailer_outbox_rows", status="pending", kind="welcome") is None
    assert elapsed < 1.5, f"the scrape took {elapsed:.2f}s"
    assert total < 30
