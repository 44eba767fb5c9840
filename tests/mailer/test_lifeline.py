from datetime import timedelta

import pytest
from celery.worker import state as worker_state
from django.utils import timezone

from mailer import leases, lifeline
from mailer.dispatch import WELCOME_TASK
from mailer.models import Delivery
from tests.factories import DeliveryFactory

pytestmark = pytest.mark.django_db


class FakeRequest:
    """What the lifeline reads of a Celery request (weakly referenced by Celery)."""

    def __init__(self, delivery: Delivery, *, eta=None) -> None:
        self.id = delivery.task_id
        self.task_name = WELCOME_TASK
        self.args = [delivery.pk]
        self.eta = eta
        self.time_start = None


@pytest.fixture
def watching(monkeypatch):
    """A lifeline that is not running, as the worker's receipt signal sees it."""
    watcher = lifeline.Lifeline(app=None)
    monkeypatch.setattr(lifeline, "_lifeline", watcher)
    yield watcher
    worker_state.reserved_requests.clear()
    worker_state.active_requests.clear()


def test_a_received_send_task_wakes_the_lifeline_and_one_with_a_countdown_does_not(
    watching,
):
    fresh, retrying = DeliveryFactory(), DeliveryFactory(retries=1)

    lifeline.renew_on_receipt(sender=None, request=FakeRequest(fresh))
    lifeline.renew_on_receipt(
        sender=None, request=FakeRequest(retrying, eta=timezone.now())
    )

    assert watching.receipts == {fresh.pk}
    assert watching.wake.is_set()


def test_receipts_renew_only_the_rows_whose_message_still_waits(watching):
    later = timezone.now() + timedelta(seconds=300)
    waiting, started, finished = (
        DeliveryFactory(lease_expires_at=later) for _ in "abc"
    )
    requests = [FakeRequest(waiting), FakeRequest(started)]
    worker_state.reserved_requests.update(requests)
    worker_state.active_requests.add(requests[1])
    for delivery in (waiting, started, finished):
        watching.note_receipt(delivery.pk)

    watching.renew_receipts()

    renewed = Delivery.objects.get(pk=waiting.pk).lease_expires_at
    assert abs(renewed - (timezone.now() + leases.lease())) < timedelta(seconds=2)
    for untouched in (started, finished):
        assert Delivery.objects.get(pk=untouched.pk).lease_expires_at == later
    assert watching.receipts == set()
