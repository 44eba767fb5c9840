"""Leases: how long a row stays held, and the bulk moves made on them.

Every lease is on the database's clock (`Now()`): worker and web hosts may
drift; the database is the one clock every comparison uses.
"""

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models.functions import Now

from mailer.models import Delivery


def stale_after() -> timedelta:
    """The backstop lease of a row whose message no worker holds."""
    return timedelta(seconds=settings.MAILER_STALE_AFTER)


def lease() -> timedelta:
    """How long a worker's hold on a row lasts without renewal."""
    return timedelta(seconds=settings.MAILER_LEASE)


def renew_leases(*, delivery_ids: list[int], task_ids: list[str]) -> int:
    """Extend the leases of rows this worker holds: messages and attempts.

    Pending rows by id (their messages are in this worker's hands); sending
    rows only under this worker's task ids, so a stale copy of a message
    never keeps another attempt's row alive.
    """
    if not delivery_ids:
        return 0
    held = Delivery.objects.filter(pk__in=delivery_ids).filter(
        models.Q(status=Delivery.Status.PENDING, waiting_for_relay=False)
        | models.Q(status=Delivery.Status.SENDING, task_id__in=task_ids)
    )
    return held.update(lease_expires_at=Now() + lease())


def make_pending_due() -> int:
    """Make every pending row due now: the broker lost its queue."""
    return Delivery.objects.filter(
        status=Delivery.Status.PENDING, waiting_for_relay=False
    ).update(lease_expires_at=Now())


def release_parked() -> int:
    """Make every row parked for the relay due now; return how many."""
    return Delivery.objects.filter(
        status=Delivery.Status.PENDING, waiting_for_relay=True
    ).update(waiting_for_relay=False, lease_expires_at=Now())
