"""Sending through anymail's Postmark backend, against a fake Postmark API."""

import logging

import pytest

from mailer import budget
from mailer.models import Delivery, RelayState, Suppression
from mailer.tasks import send_welcome_email
from tests.factories import DeliveryFactory
from tests.support import free_port
from tests.support.esp import TOKEN, FakePostmark
from tests.support.mail import use_backend

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def postmark_server():
    server = FakePostmark().start()
    yield server
    server.stop()


@pytest.fixture
def postmark(postmark_server, settings):
    """Mail goes to the fake Postmark API through anymail's backend."""
    postmark_server.reset()
    use_backend(settings, "anymail.backends.postmark.EmailBackend")
    settings.ANYMAIL = {
        **settings.ANYMAIL,
        "POSTMARK_SERVER_TOKEN": TOKEN,
        "POSTMARK_API_URL": postmark_server.url,
    }
    yield postmark_server
    postmark_server.reset()


@pytest.fixture
def delivery():
    return DeliveryFactory(user__email="ada@example.com")


def send(delivery) -> tuple[str, Delivery]:
    result = send_welcome_email.apply(args=(delivery.pk,))
    delivery.refresh_from_db()
    return ("failed" if result.failed() else result.get()), delivery


def test_a_mail_accepted_by_the_esp_is_sent_with_its_row_id_in_metadata(
    postmark, delivery
):
    outcome, delivery = send(delivery)

    assert outcome == "sent" and delivery.status == Delivery.Status.SENT
    [mail] = postmark.accepted_to("ada@example.com")
    assert mail["Metadata"] == {"delivery_id": str(delivery.pk)}
    assert mail["Subject"] == "Welcome! Please activate your account"
    assert "/activate/" in mail["TextBody"] and "/activate/" in mail["HtmlBody"]
    headers = {h["Name"]: h["Value"] for h in mail.get("Headers", [])}
    assert headers["Message-ID"] == delivery.message_id


@pytest.mark.parametrize("reply", ["inactive", "invalid"])
def test_a_recipient_the_esp_refuses_fails_the_row_and_is_suppressed(
    postmark, delivery, reply
):
    postmark.replies["ada@example.com"] = [reply]

    outcome, delivery = send(delivery)

    assert outcome == "failed" and delivery.status == Delivery.Status.FAILED
    assert delivery.retries == 0 and postmark.attempts["ada@example.com"] == 1
    [entry] = Suppression.objects.all()
    assert (entry.address, entry.source) == ("ada@example.com", "esp_api")
    assert entry.reason == Suppression.Reason.HARD_BOUNCE
    assert entry.evidence.startswith("Postmark: ")


@pytest.mark.parametrize("reply", ["rate-limited", "server-error"])
def test_a_429_or_5xx_is_throttling_the_mail_waits_its_turn_without_a_retry(
    postmark, delivery, reply, redis_server
):
    budget.forget()
    postmark.replies["ada@example.com"] = [reply]

    outcome, delivery = send(delivery)  # Task.apply runs the requeued copy at once

    assert outcome == "sent" and delivery.status == Delivery.Status.SENT
    assert not delivery.waiting_for_relay and delivery.retries == 0
    assert len(postmark.accepted_to("ada@example.com")) == 1
    assert not RelayState.objects.filter(down_since__isnull=False).exists()
    assert not Suppression.objects.exists()
    budget.forget()


def test_a_bad_token_fails_the_row_loudly_and_suppresses_nothing(
    postmark, delivery, settings, caplog
):
    settings.ANYMAIL = {**settings.ANYMAIL, "POSTMARK_SERVER_TOKEN": "wrong"}

    with caplog.at_level(logging.ERROR, logger="mailer.esp"):
        outcome, delivery = send(delivery)

    assert outcome == "failed" and delivery.status == Delivery.Status.FAILED
    assert delivery.smtp_code == 401 and "Server Token" in delivery.last_error
    assert any("configuration error" in r.getMessage() for r in caplog.records)
    assert not Suppression.objects.exists()


def test_an_unreachable_esp_is_transient_and_retried(postmark, delivery, settings):
    settings.MAILER_MAX_RETRIES = 1
    settings.MAILER_RETRY_BACKOFF = 0.01
    # A port with nothing listening: the connection is refused.
    closed = f"http://127.0.0.1:{free_port()}/"
    settings.ANYMAIL = {**settings.ANYMAIL, "POSTMARK_API_URL": closed}

    outcome, delivery = send(delivery)

    assert outcome == "failed"
    assert delivery.retries == 1 and delivery.attempts == 2
    assert delivery.status == Delivery.Status.FAILED
    assert not Suppression.objects.exists()


def test_an_unreachable_esp_is_named_in_the_rows_error(postmark, delivery, settings):
    settings.MAILER_MAX_RETRIES = 0
    closed = f"http://127.0.0.1:{free_port()}/"
    settings.ANYMAIL = {**settings.ANYMAIL, "POSTMARK_API_URL": closed}

    outcome, delivery = send(delivery)

    assert outcome == "failed" and delivery.smtp_code is None
    assert "Error posting to" in delivery.last_error
    assert "ConnectionError" in delivery.last_error


def test_a_timeout_after_the_esp_took_the_mail_sends_a_second_copy(
    postmark, delivery, settings
):
    """The duplicate window of an HTTP API (docs/RELIABILITY.md), measured."""
    settings.MAILER_MAX_RETRIES = 1
    settings.MAILER_RETRY_BACKOFF = 0.01
    settings.ANYMAIL = {**settings.ANYMAIL, "REQUESTS_TIMEOUT": 0.5}
    postmark.slow_seconds = 1.5
    postmark.replies["ada@example.com"] = ["slow"]

    outcome, delivery = send(delivery)

    assert outcome == "sent" and delivery.retries == 1
    copies = postmark.accepted_to("ada@example.com")
    assert len(copies) == 2
    ids = {
        h["Value"] for c in copies for h in c["Headers"] if h["Name"] == "Message-ID"
    }
    assert ids == {delivery.message_id}


def test_a_suppressed_address_makes_no_api_call(postmark, delivery):
    Suppression.objects.create(
        address="ada@example.com", reason="complaint", source="webhook"
    )

    outcome, delivery = send(delivery)

    assert outcome == "suppressed" and postmark.requests == []
