"""The suppression list leaks nothing, and its webhooks take no forged event."""

import base64
import json

import pytest

from mailer.models import Suppression, TrackingEvent
from tests.factories import UserFactory
from tests.support import register
from tests.support.esp import bounce_event, serve_webhooks

pytestmark = pytest.mark.django_db

SECRET = "postmark:a-long-random-webhook-secret"
TRACKING = "/anymail/postmark/tracking/"


@pytest.fixture(autouse=True)
def _no_rate_limits(settings):
    settings.RATELIMIT_REGISTER_IP = ""
    settings.RATELIMIT_REGISTER_ADDRESS = ""
    settings.RATELIMIT_RESEND_IP = ""
    settings.RATELIMIT_RESEND_ADDRESS = ""


@pytest.fixture
def webhooks(settings):
    yield from serve_webhooks(settings, SECRET)


def post_event(client, body, **headers):
    return client.post(
        TRACKING, data=json.dumps(body), content_type="application/json", **headers
    )


def basic(secret: str) -> str:
    return "Basic " + base64.b64encode(secret.encode()).decode()


@pytest.mark.parametrize("channel", ["api", "form"])
def test_a_suppressed_address_gets_the_same_answers_as_any_other(client, channel):
    UserFactory(email="listed@example.com")
    UserFactory(email="fine@example.com")
    Suppression.objects.create(
        address="listed@example.com", reason="complaint", source="webhook"
    )

    def answer(email):
        if channel == "api":
            response = register(client, email)
            return response.status_code, response.content
        response = client.post(
            "/register/",
            {"email": email, "password": "correct horse battery staple"},
        )
        return response.status_code, response.get("Location")

    assert answer("listed@example.com") == answer("fine@example.com")
    assert answer("new-listed@example.com") == answer("new-fine@example.com")


def test_a_suppressed_address_gets_the_same_resend_answer(client):
    UserFactory(email="listed@example.com")
    UserFactory(email="fine@example.com")
    Suppression.objects.create(address="listed@example.com", reason="hard_bounce")

    def answer(email):
        response = client.post(
            "/api/activation/resend",
            {"email": email},
            content_type="application/json",
        )
        return response.status_code, response.content

    assert answer("listed@example.com") == answer("fine@example.com")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"HTTP_AUTHORIZATION": basic("postmark:wrong")},
        {"HTTP_AUTHORIZATION": basic(SECRET + "x")},
        {"HTTP_AUTHORIZATION": "Bearer " + SECRET},
    ],
    ids=["none", "wrong", "longer", "not-basic"],
)
def test_a_forged_event_is_refused_and_stores_nothing(client, webhooks, headers):
    body = bounce_event(email="victim@example.com", event_id=1)

    response = post_event(client, body, **headers)

    assert response.status_code == 400
    assert not Suppression.objects.exists()
    assert not TrackingEvent.objects.exists()


def test_the_webhook_takes_only_posts(client, webhooks):
    response = client.get(TRACKING, HTTP_AUTHORIZATION=basic(SECRET))

    assert response.status_code == 405


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not json", 400),
        (b"[]", 400),
        # Readable, but names no one: read, and nothing to do.
        (b'{"RecordType": "Bounce", "Type": "HardBounce"}', 200),
    ],
    ids=["not-json", "a-list", "no-recipient"],
)
def test_malformed_events_are_no_500_and_suppress_nothing(
    client, webhooks, body, status
):
    response = client.post(
        TRACKING,
        data=body,
        content_type="application/json",
        HTTP_AUTHORIZATION=basic(SECRET),
    )

    assert response.status_code == status
    assert not Suppression.objects.exists()
