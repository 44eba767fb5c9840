from datetime import timedelta

import pytest
from django.utils import timezone

from mailer import leases
from mailer.models import Delivery
from tests.factories import DeliveryFactory

pytestmark = pytest.mark.django_db


def test_after_a_broker_outage_only_rows_whose_message_the_broker_held_become_due():
    now = timezone.now()
    queued = DeliveryFactory(lease_expires_at=now + timedelta(seconds=290))
    held = DeliveryFactory(lease_expires_at=now + timedelta(seconds=8))
    backing_off = DeliveryFactory(
        retries=2, lease_expires_at=now + timedelta(seconds=60)
    )
    parked = DeliveryFactory(
        waiting_for_relay=True, lease_expires_at=now + timedelta(seconds=60)
    )
    sending = DeliveryFactory(
        status=Delivery.Status.SENDING, lease_expires_at=now + timedelta(seconds=290)
    )

    outage_began = timezone.now()
    # Published again by a rescue once the broker was back: not lost again.
    republished = DeliveryFactory(lease_expires_at=now + timedelta(seconds=300))

    assert leases.make_queued_due(published_before=outage_began) == 1

    due = Delivery.objects.filter(lease_expires_at__lte=timezone.now())
    assert list(due) == [queued]
    for untouched in (held, backing_off, parked, sending, republished):
        fresh = Delivery.objects.get(pk=untouched.pk)
        assert fresh.lease_expires_at == untouched.lease_expires_at


def test_renewal_holds_waiting_messages_and_running_attempts_and_spares_a_backoff():
    now = timezone.now()
    fresh = DeliveryFactory(lease_expires_at=now + timedelta(seconds=300))
    running = DeliveryFactory(
        status=Delivery.Status.SENDING, lease_expires_at=now + timedelta(seconds=2)
    )
    # Its attempt got a 450 and handed it back, but has not returned yet.
    backing_off = DeliveryFactory(
        retries=1, lease_expires_at=now + timedelta(seconds=40)
    )
    copy_of_other_attempt = DeliveryFactory(
        status=Delivery.Status.SENDING, lease_expires_at=now + timedelta(seconds=2)
    )

    renewed = leases.renew_leases(
        waiting_ids=[fresh.pk],
        running={
            running.task_id: running.pk,
            backing_off.task_id: backing_off.pk,
            "a-stale-copy": copy_of_other_attempt.pk,
        },
    )

    assert renewed == 2
    for held in (fresh, running):
        expires = Delivery.objects.get(pk=held.pk).lease_expires_at
        assert abs(expires - (timezone.now() + leases.lease())) < timedelta(seconds=2)
    for untouched in (backing_off, copy_of_other_attempt):
        row = Delivery.objects.get(pk=untouched.pk)
        assert row.lease_expires_at == untouched.lease_expires_at
