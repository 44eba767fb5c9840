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

    assert leases.make_queued_due() == 1

    due = Delivery.objects.filter(lease_expires_at__lte=timezone.now())
    assert list(due) == [queued]
    for untouched in (held, backing_off, parked, sending):
        fresh = Delivery.objects.get(pk=untouched.pk)
        assert fresh.lease_expires_at == untouched.lease_expires_at
