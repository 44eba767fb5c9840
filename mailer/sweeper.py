"""The sweeper: publish again what was left behind (beat and every lifeline)."""

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from django.db import connection, transaction
from django.db.models import Case, CharField, Subquery, Value, When
from django.db.models.functions import Now
from django.utils import timezone

from mailer import metrics
from mailer.dispatch import PublishJob, publish_deliveries
from mailer.leases import stale_after
from mailer.models import Delivery

logger = logging.getLogger(__name__)


SWEEP_BATCH_SIZE = 500
DUE_WINDOW = 10 * SWEEP_BATCH_SIZE  # due rows ordered by id in one batch


class TakenRow(NamedTuple):
    """A due row taken by a sweep: what to publish, and what to put back."""

    job: PublishJob
    old_lease: datetime
    old_task_id: str


@dataclass
class SweepReport:
    """What one sweep found and did."""

    reclaimed: int = 0
    redispatched: list[int] = field(default_factory=list)
    not_published: list[int] = field(default_factory=list)


def sweep_stale_deliveries(
    *, batch_size: int = SWEEP_BATCH_SIZE, max_batches: int = 10
) -> SweepReport:
    """Re-dispatch rows left pending or sending past their lease.

    A sending row past its lease belongs to an attempt that died (its hard
    time limit is shorter than the lease): it goes back to pending first. A
    pending row past its lease lost its message (broker down at commit,
    Redis restarted, a retry publish dropped). Each gets a new task id and a
    lease pushed MAILER_STALE_AFTER ahead, so the next sweep leaves it
    alone; the claim keeps a late original and the new copy from both
    sending. Works in batches of `batch_size`, at most `max_batches`.
    """
    report = SweepReport()
    for _ in range(max_batches):
        report.reclaimed += _reclaim_dead_attempts(limit=batch_size)
        taken = _lease_due_deliveries(limit=batch_size)
        if taken:
            try:
                publish_deliveries([row.job for row in taken])
            except Exception as error:  # noqa: BLE001 - due again for the next sweep
                logger.warning(
                    "Sweep could not publish %d deliveries: %r", len(taken), error
                )
                _release_leases(taken)
                report.not_published.extend(row.job.delivery_id for row in taken)
                break
            report.redispatched.extend(row.job.delivery_id for row in taken)
        if len(taken) < batch_size:
            break
    metrics.record_sweep(
        reclaimed=report.reclaimed,
        redispatched=len(report.redispatched),
        not_published=len(report.not_published),
    )
    return report


def _reclaim_dead_attempts(*, limit: int) -> int:
    """Move sending rows whose lease has passed back to pending."""
    dead = Delivery.objects.filter(
        status=Delivery.Status.SENDING, lease_expires_at__lt=Now()
    )
    ids = list(dead.order_by("lease_expires_at").values_list("pk", flat=True)[:limit])
    if not ids:
        return 0
    return dead.filter(pk__in=ids).update(
        status=Delivery.Status.PENDING, updated_at=timezone.now()
    )


@transaction.atomic
def _lease_due_deliveries(*, limit: int) -> list[TakenRow]:
    """Give due pending rows a new task id and lease; return the rows taken.

    The rows are taken with one compare-and-set on their old task ids, so of
    two sweeps running at once only one takes each row, and a batch costs
    the same few queries whatever its size: a relay's return releases
    hundreds of parked mails, and the first of them must not wait for one
    UPDATE per row before anything is published.
    """
    due = Delivery.objects.filter(
        status=Delivery.Status.PENDING, lease_expires_at__lt=Now()
    )
    # Oldest mail first, so a backlog goes out in commit order. The due rows
    # are found through the pending-lease index, never by scanning the table
    # in id order: at most DUE_WINDOW of them, then sorted by id.
    window = due.order_by("lease_expires_at").values("pk")[:DUE_WINDOW]
    oldest = Delivery.objects.filter(pk__in=Subquery(window)).order_by("pk")
    rows = list(oldest.values_list("pk", "kind", "lease_expires_at", "task_id")[:limit])
    if not rows:
        return []
    new_ids = {pk: str(uuid.uuid4()) for pk, *_ in rows}
    old_ids = {pk: old_task_id for pk, _, _, old_task_id in rows}
    lease, now = Now() + stale_after(), timezone.now()
    moved = set()
    for chunk in _chunks(list(new_ids), _rows_per_statement()):
        due.filter(
            pk__in=chunk, task_id=_by_pk({pk: old_ids[pk] for pk in chunk})
        ).update(
            task_id=_by_pk({pk: new_ids[pk] for pk in chunk}),
            waiting_for_relay=False,
            lease_expires_at=lease,
            updated_at=now,
        )
        moved.update(
            Delivery.objects.filter(
                pk__in=chunk, task_id__in=[new_ids[pk] for pk in chunk]
            ).values_list("pk", flat=True)
        )
    return [
        TakenRow(PublishJob(pk, new_ids[pk], kind), old_lease, old_task_id)
        for pk, kind, old_lease, old_task_id in rows
        if pk in moved
    ]


def _rows_per_statement() -> int:
    """Rows per compare-and-set: five parameters each, within the backend's limit.

    SQLite builds before 3.32 take at most 999 (Django's `max_query_params`);
    PostgreSQL sets no limit here.
    """
    limit = connection.features.max_query_params
    return SWEEP_BATCH_SIZE if limit is None else max(1, (limit - 10) // 5)


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _by_pk(values: dict[int, str]) -> Case:
    """A task id per row, as one SQL expression: CASE id WHEN ... THEN ... END."""
    return Case(
        *(When(pk=pk, then=Value(value)) for pk, value in values.items()),
        output_field=CharField(),
    )


def _release_leases(taken: list[TakenRow]) -> None:
    """Make rows whose publish failed due again, unless a worker took them."""
    for row in taken:
        Delivery.objects.filter(
            pk=row.job.delivery_id,
            status=Delivery.Status.PENDING,
            task_id=row.job.task_id,
        ).update(lease_expires_at=row.old_lease, task_id=row.old_task_id)
