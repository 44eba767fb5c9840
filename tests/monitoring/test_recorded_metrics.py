"""What the send task, the sweeper and the registration views count."""

import json
import smtplib
from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client import REGISTRY

from mailer import metrics
from mailer.models import Delivery
from mailer.tasks import send_welcome_email, sweep_stale_deliveries
from tests.factories import DeliveryFactory

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Delta:
    """Sample values before an action, to compare with after it."""

    def __init__(self, *series: tuple[str, dict]) -> None:
        self.series = series
        self.before = [sample(name, **labels) for name, labels in series]

    def __call__(self) -> list[float]:
        return [
            sample(name, **labels) - before
            for (name, labels), before in zip(self.series, self.before, strict=True)
        ]


def deliveries(outcome: str, kind: str = "welcome") -> tuple[str, dict]:
    return "mailer_deliveries_total", {"kind": kind, "outcome": outcome}


def test_a_sent_mail_counts_its_outcome_reply_duration_and_latency(mailoutbox):
    delivery = DeliveryFactory()
    Delivery.objects.filter(pk=delivery.pk).update(
        created_at=timezone.now() - timedelta(seconds=3)
    )
    delta = Delta(
        deliveries("sent"),
        ("mailer_smtp_replies_total", {"class": "2xx"}),
        ("mailer_attempt_duration_seconds_count", {"outcome": "sent"}),
        ("mailer_delivery_latency_seconds_count", {"kind": "welcome"}),
        ("mailer_delivery_latency_seconds_bucket", {"kind": "welcome", "le": "2.5"}),
        ("mailer_delivery_latency_seconds_bucket", {"kind": "welcome", "le": "5.0"}),
    )

    assert send_welcome_email.apply(args=(delivery.pk,)).get() == "sent"

    # Three seconds since commit: above the 2.5 s bucket, inside the 5 s one.
    assert delta() == [1, 1, 1, 1, 0, 1]
    assert sample("mailer_relay_up", source="attempts") == 1


def test_a_refused_mail_counts_failed_and_a_5xx_reply(smtp, real_smtp):
    delivery = DeliveryFactory(user__email="refused@example.com")
    smtp.script.replies["refused@example.com"] = ["550 5.1.1 No such user"]
    delta = Delta(
        deliveries("failed"),
        ("mailer_smtp_replies_total", {"class": "5xx"}),
        ("mailer_attempt_duration_seconds_count", {"outcome": "failed"}),
        ("mailer_retries_total", {"cause": "smtp"}),
    )

    result = send_welcome_email.apply(args=(delivery.pk,))

    assert result.failed()
    assert delta() == [1, 1, 1, 0]


def test_a_transient_reply_counts_a_retry_then_the_send(smtp, real_smtp, settings):
    settings.MAILER_RETRY_BACKOFF = 0.01
    delivery = DeliveryFactory(user__email="later@example.com")
    smtp.script.replies["later@example.com"] = ["451 4.3.0 Try again later"]
    delta = Delta(
        deliveries("retry"),
        deliveries("sent"),
        ("mailer_smtp_replies_total", {"class": "4xx"}),
        ("mailer_retries_total", {"cause": "smtp"}),
    )

    assert send_welcome_email.apply(args=(delivery.pk,)).get() == "sent"

    assert delta() == [1, 1, 1, 1]


def test_a_second_copy_of_a_task_counts_skipped(mailoutbox):
    delivery = DeliveryFactory()
    send_welcome_email.apply(args=(delivery.pk,))
    delta = Delta(deliveries("skipped", kind="unknown"))

    assert send_welcome_email.apply(args=(delivery.pk,)).get() == "skipped"

    assert delta() == [1]


def test_the_sweeper_counts_its_redispatches(redis_server):
    stale = timezone.now() - timedelta(minutes=10)
    DeliveryFactory.create_batch(2, lease_expires_at=stale)
    DeliveryFactory(status=Delivery.Status.SENDING, lease_expires_at=stale)
    delta = Delta(
        ("mailer_sweeps_total", {}),
        ("mailer_sweeper_reclaimed_total", {}),
        ("mailer_sweeper_redispatched_total", {}),
    )

    sweep_stale_deliveries.apply()

    assert delta() == [1, 1, 3]


@pytest.mark.parametrize(
    ("error", "code", "expected"),
    [
        (None, None, "2xx"),
        (smtplib.SMTPDataError(451, b"later"), 451, "4xx"),
        (smtplib.SMTPRecipientsRefused({"a@b": (550, b"no")}), 550, "5xx"),
        (TimeoutError("timed out"), None, "timeout"),
        (ConnectionRefusedError(111, "refused"), None, "connection"),
        (smtplib.SMTPServerDisconnected("gone"), None, "connection"),
        (smtplib.SMTPResponseException(-1, b"garbled"), -1, "connection"),
    ],
)
def test_smtp_replies_are_classed_by_code_then_by_error(error, code, expected):
    assert metrics.smtp_class_of(error, code) == expected


def test_label_values_outside_their_sets_are_counted_as_other():
    delta = Delta(("mailer_deliveries_total", {"kind": "other", "outcome": "other"}))

    metrics.record_attempt(kind="ada@example.com", outcome="<token>")

    assert delta() == [1]
    assert (
        sample("mailer_deliveries_total", kind="ada@example.com", outcome="<token>")
        == 0
    )


def test_the_relay_hook_sets_the_breaker_series_apart_from_attempts():
    metrics.record_relay_state(up=False)

    assert sample("mailer_relay_up", source="breaker") == 0
    metrics.record_relay_state(up=True)
    assert sample("mailer_relay_up", source="breaker") == 1


def register(client, email: str, password: str = PASSWORD):
    body = json.dumps({"email": email, "password": password})
    return client.post("/api/register", body, content_type="application/json")


def registrations(channel: str, answer: str) -> tuple[str, dict]:
    return "users_registrations_total", {"channel": channel, "answer": answer}


def test_registrations_are_counted_by_answer(client, redis_server, settings):
    settings.RATELIMIT_REGISTER_IP = "2/h"
    delta = Delta(
        registrations("api", "accepted"),
        registrations("api", "400"),
        registrations("api", "429"),
        ("users_ratelimit_rejections_total", {"scope": "register", "by": "ip"}),
    )

    assert register(client, "new@example.com").status_code == 202
    assert register(client, "not-an-address").status_code == 400
    assert register(client, "third@example.com").status_code == 429
    assert client.get("/api/register").status_code == 405

    assert delta() == [1, 1, 1, 1]


def test_form_registrations_are_counted_and_pages_are_not(client, redis_server):
    delta = Delta(registrations("form", "accepted"), registrations("form", "400"))

    client.get("/register/")
    client.post("/register/", {"email": "form@example.com", "password": PASSWORD})
    client.post("/register/", {"email": "", "password": ""})

    assert delta() == [1, 1]


@pytest.mark.parametrize("outcome", ["deferred", "parked"])
def test_a_mail_held_back_for_the_relay_is_counted_by_its_own_outcome(outcome):
    delta = Delta(deliveries(outcome))

    metrics.record_attempt(kind="welcome", outcome=outcome)

    assert delta() == [1]
