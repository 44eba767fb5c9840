"""A batch stops at the relay's word: a throttle reply or an outage mid-batch.

`batching._send_plainly` runs in-process against the suite's SMTP server as
the relay and its Redis as the budget: the mails after the one the relay
throttled or refused as a whole are not tried, and wait with no retry spent.
Sent rows are marked as they go, not all at the batch's end.
"""

import pytest

from mailer import attempts, batching
from mailer.models import Delivery, RelayState
from tests.factories import DeliveryFactory

pytestmark = pytest.mark.django_db


def batch_of(count: int, prefix: str) -> list[Delivery]:
    return [
        DeliveryFactory(user__email=f"{prefix}{n}@example.com") for n in range(count)
    ]


def send(deliveries: list[Delivery]) -> dict[str, attempts.Outcome]:
    return batching._send_plainly({d.task_id: d.pk for d in deliveries})


def statuses(deliveries: list[Delivery]) -> list[str]:
    by_pk = Delivery.objects.in_bulk([d.pk for d in deliveries])
    return [by_pk[d.pk].status for d in deliveries]


def test_a_throttle_reply_mid_batch_stops_it_and_the_rest_wait_unspent(
    relay_budget,
):
    relay_budget.script.rate = 3  # then SES's 454 at MAIL FROM for 30 s
    relay_budget.script.rate_window = 30
    deliveries = batch_of(8, "paced")

    outcomes = send(deliveries)

    names = [outcomes[d.task_id].name for d in deliveries]
    assert names == ["sent"] * 3 + ["throttled"] * 5
    assert relay_budget.refused_mails == 1  # the rest were not tried
    assert statuses(deliveries) == ["sent"] * 3 + ["pending"] * 5
    for row in Delivery.objects.filter(status="pending"):
        assert (row.retries, row.waiting_for_relay) == (0, False)
        assert row.attempts == 1  # the claim counted; no retry was spent
    assert not RelayState.objects.filter(down_since__isnull=False).exists()


def test_the_relay_refusing_as_a_whole_mid_batch_parks_the_rest_untried(
    relay_budget,
):
    deliveries = batch_of(8, "outage")
    relay_budget.script.replies = {
        "outage2@example.com": ["421 4.3.0 Service shutting down"]
    }

    outcomes = send(deliveries)

    names = [outcomes[d.task_id].name for d in deliveries]
    assert names == ["sent"] * 2 + ["parked"] * 6
    assert relay_budget.data_started == 3  # two mails and the refused one
    assert statuses(deliveries) == ["sent"] * 2 + ["pending"] * 6
    parked = Delivery.objects.filter(pk__in=[d.pk for d in deliveries[2:]])
    assert all(row.waiting_for_relay and row.retries == 0 for row in parked)


def test_sent_rows_are_marked_as_the_batch_goes_on_a_slow_relay(
    relay_budget, monkeypatch
):
    relay_budget.script.delay = 0.15  # each 250 comes after MARK_EVERY
    deliveries = batch_of(4, "slow")
    marked_while_sending = []
    real_send = batching.claims.send_delivery

    def send_and_look(delivery, *, smtp):
        marked_while_sending.append(
            Delivery.objects.filter(
                pk__in=[d.pk for d in deliveries], status="sent"
            ).count()
        )
        real_send(delivery, smtp=smtp)

    monkeypatch.setattr(batching.claims, "send_delivery", send_and_look)

    send(deliveries)

    # Before each mail's DATA, every mail before it in the batch is marked.
    assert marked_while_sending == [0, 1, 2, 3]
    assert statuses(deliveries) == ["sent"] * 4


def test_no_connection_to_the_relay_fails_the_first_mail_alone_and_marks_it_down(
    relay_budget, monkeypatch
):
    def refused(**_):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(batching.pool, "checkout", refused)
    deliveries = batch_of(5, "unreachable")

    outcomes = send(deliveries)

    # The first is parked as it would be alone; the rest are left to the
    # per-mail path, which finds the relay down and parks them unclaimed.
    assert {t: o.name for t, o in outcomes.items()} == {deliveries[0].task_id: "parked"}
    first = Delivery.objects.get(pk=deliveries[0].pk)
    assert (first.attempts, first.retries, first.waiting_for_relay) == (1, 0, True)
    assert "refused" in first.last_error.lower()
    assert RelayState.objects.filter(down_since__isnull=False).exists()
    assert statuses(deliveries[1:]) == ["pending"] * 4
    assert all(
        row.attempts == 0
        for row in Delivery.objects.filter(pk__in=[d.pk for d in deliveries[1:]])
    )
