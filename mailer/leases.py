"""Leases: how long a row stays held, and the bulk moves made on them.

Every lease is on the database's clock (`Now()`): worker and web hosts may
drift; the database is the one clock every comparison uses.
"""

from datetime import datetime, timedelta

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


def renew_leases(*, waiting_ids: list[int], running: dict[str, int]) -> int:
    """Extend the leases of rows this worker holds: messages and attempts.

    Pending rows only for messages not started yet (`waiting_ids`): once
    an attempt ran, a pending row waits for its retry's countdown or for
    the relay, on a lease set for that, which a renewal would cut short (and
    the rescue would then send it early). Sending rows only under the task
    ids of the attempts this worker runs (`running`: task id to row id), so
    a stale copy of a message never keeps another attempt's row alive.
    """
    if not waiting_ids and not running:
        return 0
    held = Delivery.objects.filter(
        models.Q(
            pk__in=waiting_ids,
            status=Delivery.Status.PENDING,
            waiting_for_relay=False,
        )
        | models.Q(
            pk__in=list(running.values()),
            status=Delivery.Status.SENDING,
            task_id__in=list(running),
        )
    )
    return held.update(lease_expires_at=Now() + lease())


def make_pending_due() -> int:
    """Make every pending row due now: the broker lost its queue."""
    return Delivery.objects.filter(
        status=Delivery.Status.PENDING, waiting_for_relay=False
    ).update(lease_expires_at=Now())


def make_queued_due(*, published_before: datetime) -> int:
    """Make due the pending rows whose message only the broker holds.

    No worker renews them (their lease lies beyond one MAILER_LEASE), and
    no retry waits on them: after a broker outage one of their messages may
    have been popped by a worker and lost before it was recorded unacked.
    Only rows last published before the outage began (`published_before`):
    a row a rescue published again since the broker came back is not lost
    again, and a second copy would only cost a skip in the backlog.
    The claim turns every surviving original into a skip.
    """
    return Delivery.objects.filter(
        status=Delivery.Status.PENDING,
        waiting_for_relay=False,
        retries=0,
        lease_expires_at__gt=Now() + 2 * lease(),
        updated_at__lt=published_before,
    ).update(lease_expires_at=Now())


def release_next_parked(*, after: int | None = None) -> int | None:
    """Make one parked row due now: the oldest after row `after`, else the oldest.

    Returns its id, if any. Successive trials take the parked rows in
    turn, so a mail the relay drops for its own sake holds up no other.
    """
    parked = Delivery.objects.filter(
        status=Delivery.Status.PENDING, waiting_for_relay=True
    ).order_by("pk")
    later = parked if after is None else parked.filter(pk__gt=after)
    for rows in (later, parked):
        for delivery_id in rows.values_list("pk", flat=True)[:3]:
            # Another process may release it first: then try the next one.
            if parked.filter(pk=delivery_id).update(
                waiting_for_relay=False, lease_expires_at=Now()
            ):
                return delivery_id
    return None


def release_parked() -> int:
    """Make every row parked for the relay due now; return how many."""
    return Delivery.objects.filter(
        status=Delivery.Status.PENDING, waiting_for_relay=True
    ).update(waiting_for_relay=False, lease_expires_at=Now())
