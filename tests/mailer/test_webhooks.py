"""ESP tracking webhooks under /anymail/: Postmark's payloads, as its docs show."""

import base64
import json

import pytest
from anymail.signals import AnymailTrackingEvent
from django.core.checks import run_checks

from mailer import metrics
from mailer.esp import record_event
from mailer.models import Delivery, Suppression, TrackingEvent
from mailer.suppression import lift
from tests.factories import DeliveryFactory
from tests.support.esp import (
    bounce_event,
    delivery_event,
    serve_webhooks,
    spam_complaint_event,
)
from tests.support.mail import use_backend

pytestmark = pytest.mark.django_db

SECRET = "postmark:webhook-secret-for-tests"
TRACKING = "/anymail/postmark/tracking/"


@pytest.fixture
def webhooks(settings):
    """The webhook URLs served, as with ANYMAIL_WEBHOOK_SECRET set."""
    yield from serve_webhooks(settings, SECRET)


def post(client, body: dict, *, secret: str = SECRET):
    auth = base64.b64encode(secret.encode()).decode()
    return client.post(
        TRACKING,
        data=json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Basic {auth}",
    )


def bounces(reason: str) -> float:
    return metrics.BOUNCES.labels(reason=reason, source="webhook")._value.get()


def test_a_hard_bounce_suppresses_its_address_and_names_the_row(client, webhooks):
    delivery = DeliveryFactory(
        user__email="ada@example.com", status=Delivery.Status.SENT
    )
    before = bounces("hard_bounce")

    body = bounce_event(email="Ada@example.com", event_id=4323, delivery_id=delivery.pk)
    response = post(client, body)

    assert response.status_code == 200
    [entry] = Suppression.objects.all()
    assert entry.address == "Ada@example.com"
    assert (entry.reason, entry.source) == ("hard_bounce", "webhook")
    assert "4323" in entry.evidence
    [event] = TrackingEvent.objects.all()
    assert event.delivery_id == delivery.pk and event.event_type == "bounced"
    assert bounces("hard_bounce") == before + 1


def test_a_spam_complaint_suppresses_with_the_reason_complaint(client, webhooks):
    response = post(client, spam_complaint_event(email="bob@example.com", event_id=42))

    assert response.status_code == 200
    [entry] = Suppression.objects.all()
    assert (entry.address, entry.reason) == ("bob@example.com", "complaint")


def test_a_replayed_event_does_nothing_even_after_a_lift(client, webhooks):
    body = bounce_event(email="ada@example.com", event_id=7)
    assert post(client, body).status_code == 200
    lift(address="ada@example.com", by="test")
    before = bounces("hard_bounce")

    assert post(client, body).status_code == 200

    assert not Suppression.objects.exists()
    assert TrackingEvent.objects.count() == 1
    assert bounces("hard_bounce") == before


def test_an_event_without_metadata_is_matched_by_its_recipient(client, webhooks):
    DeliveryFactory(user__email="ada@example.com")
    latest = DeliveryFactory(
        user=Delivery.objects.get().user, kind=Delivery.Kind.ACCOUNT_EXISTS
    )

    post(client, bounce_event(email="ADA@example.com", event_id=8))

    assert TrackingEvent.objects.get().delivery_id == latest.pk


@pytest.mark.parametrize(
    "body",
    [
        bounce_event(email="full@example.com", event_id=9, type_="SoftBounce"),
        delivery_event(email="fine@example.com"),
    ],
    ids=["soft-bounce", "delivery"],
)
def test_soft_bounces_and_deliveries_suppress_nothing(client, webhooks, body):
    assert post(client, body).status_code == 200

    assert not Suppression.objects.exists()
    assert not TrackingEvent.objects.exists()


def test_a_wrong_secret_is_refused_and_changes_nothing(client, webhooks):
    body = bounce_event(email="ada@example.com", event_id=10)

    response = post(client, body, secret="postmark:guess")

    assert response.status_code == 400
    assert not Suppression.objects.exists()


def test_without_a_secret_the_webhook_urls_are_not_served(client):
    body = bounce_event(email="ada@example.com", event_id=11)

    assert post(client, body).status_code == 404
    assert not Suppression.objects.exists()


def test_an_esp_backend_without_a_webhook_secret_is_warned_about(settings):
    use_backend(settings, "anymail.backends.postmark.EmailBackend")

    ids = [message.id for message in run_checks()]
    assert "mailer.W001" in ids

    settings.ANYMAIL = {**settings.ANYMAIL, "WEBHOOK_SECRET": SECRET}
    assert "mailer.W001" not in [message.id for message in run_checks()]


def test_the_smtp_backend_needs_no_webhook_secret(settings):
    use_backend(settings, "mailer.smtp.EmailBackend")

    assert "mailer.W001" not in [message.id for message in run_checks()]


def test_an_event_for_an_overlong_address_is_read_and_suppresses_nothing(
    client, webhooks
):
    address = "x" * 250 + "@example.com"

    assert post(client, bounce_event(email=address, event_id=12)).status_code == 200

    assert not Suppression.objects.exists() and not TrackingEvent.objects.exists()


@pytest.mark.parametrize(
    ("event_type", "reject_reason", "suppressed"),
    [
        ("bounced", "bounced", "hard_bounce"),
        ("rejected", "bounced", "hard_bounce"),
        ("rejected", "invalid", "hard_bounce"),
        ("complained", "spam", "complaint"),
        ("rejected", "blocked", None),
        ("rejected", "unsubscribed", None),
        ("deferred", None, None),
        ("delivered", None, None),
        ("unsubscribed", "unsubscribed", None),
    ],
)
def test_which_normalized_events_suppress(event_type, reject_reason, suppressed):
    event = AnymailTrackingEvent(
        event_type=event_type,
        reject_reason=reject_reason,
        recipient="ada@example.com",
        event_id=f"{event_type}-{reject_reason}",
        esp_event={},
    )

    assert record_event(esp_name="SendGrid", event=event) is bool(suppressed)
    reasons = list(Suppression.objects.values_list("reason", flat=True))
    assert reasons == ([suppressed] if suppressed else [])
