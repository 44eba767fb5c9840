"""A throttled mail waits its turn: no retry spent, nothing parked, relay not down."""

import smtplib
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from mailer import attempts, budget, sweeper
from mailer.models import Delivery, RelayState
from mailer.pool import pool
from mailer.tasks import send_welcome_email
from tests import services
from tests.factories import DeliveryFactory

pytestmark = pytest.mark.django_db


def attempt(delivery: Delivery) -> attempts.Outcome:
    return attempts.attempt_delivery(
        delivery_id=delivery.pk, task_id=delivery.task_id, retries=0
    )


def assert_untouched_by_throttling(delivery: Delivery) -> None:
    delivery.refresh_from_db()
    assert delivery.retries == 0
    assert not delivery.waiting_for_relay
    assert not RelayState.objects.filter(down_since__isnull=False).exists()


def test_too_many_connections_at_the_greeting_requeues_the_mail_unclaimed(relay_budget):
    relay_budget.script.max_connections = 1
    other = smtplib.SMTP("127.0.0.1", services.SMTP_PORT)  # someone else's
    delivery = DeliveryFactory(user__email="cap@example.com")
    try:
        outcome = attempt(delivery)
    finally:
        other.quit()

    assert isinstance(outcome, attempts.Throttled)
    assert outcome.code == 421 and "too many connections" in outcome.reason
    assert 1 <= outcome.countdown <= attempts.THROTTLE_COUNTDOWN_MAX
    assert_untouched_by_throttling(delivery)
    assert delivery.status == Delivery.Status.PENDING and delivery.attempts == 0
    assert budget.current_limits().concurrency == 1


def test_a_throttling_failure_at_mail_from_hands_the_claimed_row_back_pending(
    relay_budget,
):
    relay_budget.script.rate = 1
    relay_budget.script.rate_window = 30
    first = DeliveryFactory(user__email="first@example.com")
    second = DeliveryFactory(user__email="second@example.com")

    assert isinstance(attempt(first), attempts.Sent)
    outcome = attempt(second)

    assert isinstance(outcome, attempts.Throttled)
    assert outcome.code == 454
    assert_untouched_by_throttling(second)
    assert second.status == Delivery.Status.PENDING
    assert "Throttling failure" in second.last_error
    # The episode's first reply watches what the relay accepts before it cuts.
    assert budget.current_limits().rate is None


def test_the_task_sends_a_throttled_mail_on_a_later_turn_without_a_retry(relay_budget):
    relay_budget.script.rate = 1
    relay_budget.script.rate_window = 1.5
    first = DeliveryFactory(user__email="one@example.com")
    second = DeliveryFactory(user__email="two@example.com")
    send_welcome_email.apply(args=(first.pk,))

    result = send_welcome_email.apply(args=(second.pk,))

    assert result.get() == "sent"  # Task.apply runs the requeued copy at once
    assert relay_budget.refused_mails >= 1
    assert len(relay_budget.mails_to("two@example.com")) == 1
    assert_untouched_by_throttling(second)
    assert second.status == Delivery.Status.SENT


def test_no_slot_free_within_the_wait_requeues_without_touching_the_row(
    relay_budget, settings, monkeypatch
):
    settings.MAILER_RELAY_MAX_CONNECTIONS = "1"
    monkeypatch.setattr(attempts, "BUDGET_WAIT", 0.3)
    held = pool.checkout(wait=1)
    delivery = DeliveryFactory(user__email="wait@example.com")
    started = time.monotonic()
    try:
        outcome = attempt(delivery)
    finally:
        pool.checkin(held)

    assert isinstance(outcome, attempts.Throttled)
    assert outcome.reason == "relay budget: connections"
    assert time.monotonic() - started < 2
    assert_untouched_by_throttling(delivery)
    assert delivery.attempts == 0 and delivery.last_error == ""


def test_a_rate_turn_further_than_the_wait_requeues_until_just_before_it(
    relay_budget, settings, monkeypatch
):
    settings.MAILER_RELAY_RATE = "0.2"  # one mail per five seconds
    first = DeliveryFactory(user__email="r1@example.com")
    second = DeliveryFactory(user__email="r2@example.com")

    assert isinstance(attempt(first), attempts.Sent)
    outcome = attempt(second)

    assert isinstance(outcome, attempts.Throttled)
    assert outcome.reason == "relay budget: rate"
    # Its turn is 5 s away: back when that turn is within the budget's wait.
    turn_in = 5 - attempts.BUDGET_WAIT
    assert turn_in * 0.8 - 0.05 <= outcome.countdown <= turn_in
    assert_untouched_by_throttling(second)


def test_an_unclaimed_throttled_row_is_held_until_its_copy_is_due(
    relay_budget, settings
):
    """The lifeline must not publish a second copy while the first one waits."""
    settings.MAILER_RELAY_RATE = "0.1"  # one mail per ten seconds
    first = DeliveryFactory(user__email="h1@example.com")
    second = DeliveryFactory(user__email="h2@example.com")
    assert isinstance(attempt(first), attempts.Sent)
    # As the lifeline's renewal on receipt leaves it: one lease ahead.
    soon = timezone.now() + timedelta(seconds=1)
    Delivery.objects.filter(pk=second.pk).update(lease_expires_at=soon)

    outcome = attempt(second)

    assert isinstance(outcome, attempts.Throttled)
    second.refresh_from_db()
    held_for = (second.lease_expires_at - timezone.now()).total_seconds()
    assert held_for >= outcome.countdown + settings.MAILER_LEASE - 1
    assert second.status == Delivery.Status.PENDING and second.attempts == 0
    assert not sweeper.sweep_stale_deliveries().redispatched


def test_a_relay_refusing_every_connection_is_still_down(relay_budget, real_smtp):
    real_smtp(port=1)  # nothing listens
    delivery = DeliveryFactory(user__email="down@example.com")

    outcome = attempt(delivery)

    assert isinstance(outcome, attempts.Parked)
    assert RelayState.objects.get().down_since is not None


def test_a_421_at_the_greeting_with_none_of_ours_open_is_an_outage(relay_budget):
    relay_budget.script.max_connections = 1
    relay_budget.script.connection_reply = "421 4.3.2 Service shutting down"
    other = smtplib.SMTP("127.0.0.1", services.SMTP_PORT)  # not ours
    delivery = DeliveryFactory(user__email="shut@example.com")
    try:
        outcome = attempt(delivery)
    finally:
        other.quit()

    assert isinstance(outcome, attempts.Parked)
    assert RelayState.objects.get().down_since is not None
