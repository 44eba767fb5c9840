"""The rerun: failed rows back to pending, published in batches (`resend_failed`)."""

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from django.db import transaction
from django.utils import timezone

from mailer.dispatch import (
    BROKER_CHECK_TIMEOUT,
    PUBLISH_BATCH_SIZE,
    BrokerUnreachable,
    PublishJob,
    check_broker,
    publish_deliveries,
)
from mailer.leases import stale_after
from mailer.models import Delivery
from mailer.selectors import failed_task_results
from mailer.suppression import rows_of_suppressed_addresses

logger = logging.getLogger(__name__)


class RerunJob(NamedTuple):
    """A row marked for a rerun: what to publish, and the task id it had."""

    job: PublishJob
    old_task_id: str


class UnknownDeliveries(ValueError):
    """Some of the delivery ids asked for do not exist."""

    def __init__(self, ids: list[int]) -> None:
        super().__init__(ids)
        self.ids = ids


@dataclass(frozen=True)
class FailedDelivery:
    """A failed outbox row as an operator sees it before a rerun."""

    delivery_id: int
    kind: str
    email: str
    failed_at: datetime
    smtp_code: int | None
    last_error: str
    task_id: str
    task_result: str  # the failed TaskResult's exception, "" when none is stored


@dataclass
class ResendReport:
    """What a rerun did (or, for a dry run, would do)."""

    dry_run: bool
    rerun: list[FailedDelivery] = field(default_factory=list)
    skipped: dict[str, list[int]] = field(default_factory=dict)
    # Failed rows left alone because their address is suppressed.
    suppressed: list[int] = field(default_factory=list)


class ResendInterrupted(BrokerUnreachable):
    """The broker failed mid-rerun; the report says what was rerun before."""

    def __init__(self, report: ResendReport, left_failed: int) -> None:
        super().__init__(f"{left_failed} deliveries left failed")
        self.report = report
        self.left_failed = left_failed


def resend_failed_deliveries(
    *,
    ids: list[int] | None = None,
    since: datetime | None = None,
    limit: int | None = None,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
    include_suppressed: bool = False,
) -> ResendReport:
    """Rerun failed rows: back to pending with a new task id, published in batches.

    Only failed rows are rerun; asked-for rows in another state are reported
    as skipped (a sent row is never resent). The broker is checked before any
    row changes; a batch whose publish fails goes back to failed, so no row is
    left marked for a rerun that was never published. Rows whose address is
    suppressed are skipped and counted, unless `include_suppressed`: then
    they are sent despite the list. Raises `UnknownDeliveries`,
    `BrokerUnreachable` or `ResendInterrupted`.
    """
    report = ResendReport(dry_run=dry_run)
    failed = Delivery.objects.filter(status=Delivery.Status.FAILED)
    if ids:
        report.skipped = _skipped_by_id(ids)
        failed = failed.filter(pk__in=ids)
    if since is not None:
        failed = failed.filter(updated_at__gte=since)
    if not include_suppressed:
        suppressed = rows_of_suppressed_addresses(failed)
        report.suppressed = list(suppressed.order_by("pk").values_list("pk", flat=True))
        failed = failed.exclude(pk__in=suppressed.values("pk"))
    candidates = _failed_deliveries(failed.order_by("pk")[:limit])
    if dry_run or not candidates:
        report.rerun = candidates
        return report
    check_broker(timeout=BROKER_CHECK_TIMEOUT)
    for start in range(0, len(candidates), PUBLISH_BATCH_SIZE):
        batch = candidates[start : start + PUBLISH_BATCH_SIZE]
        marked = _mark_for_rerun(batch, despite_suppression=include_suppressed)
        try:
            publish_deliveries([row.job for row in marked])
        except Exception as error:  # noqa: BLE001 - any publish error: undo the batch
            _unmark_rerun(marked)
            logger.exception("Rerun publish failed; batch put back to failed")
            raise ResendInterrupted(report, len(candidates) - start) from error
        rerun_ids = {row.job.delivery_id for row in marked}
        report.rerun.extend(row for row in batch if row.delivery_id in rerun_ids)
        if progress is not None:
            progress(start + len(batch), len(candidates))
    return report


def _skipped_by_id(ids: list[int]) -> dict[str, list[int]]:
    """Check asked-for ids; return the ones that are not failed, by reason."""
    statuses = dict(Delivery.objects.filter(pk__in=ids).values_list("pk", "status"))
    missing = sorted(set(ids) - set(statuses))
    if missing:
        raise UnknownDeliveries(missing)
    skipped: dict[str, list[int]] = {}
    reasons = {
        Delivery.Status.SENT: "already sent",
        Delivery.Status.PENDING: "not failed: pending, a send is scheduled",
        Delivery.Status.SENDING: "not failed: being sent now",
        Delivery.Status.SUPPRESSED: "not failed: withheld, the address is suppressed",
    }
    for pk, status in sorted(statuses.items()):
        if status != Delivery.Status.FAILED:
            skipped.setdefault(reasons[status], []).append(pk)
    return skipped


def _failed_deliveries(rows) -> list[FailedDelivery]:
    """Describe failed rows with the failed task result stored for each."""
    rows = list(
        rows.values_list(
            "pk",
            "kind",
            "user__email",
            "updated_at",
            "smtp_code",
            "last_error",
            "task_id",
        )
    )
    results = failed_task_results([row[-1] for row in rows if row[-1]])
    return [FailedDelivery(*row, task_result=results.get(row[-1], "")) for row in rows]


@transaction.atomic
def _mark_for_rerun(
    batch: list[FailedDelivery], *, despite_suppression: bool = False
) -> list[RerunJob]:
    """Move still-failed rows back to pending with new task ids; return them.

    The batch's rows are locked first (SELECT ... FOR UPDATE; on SQLite the
    IMMEDIATE transaction holds the write lock), so a row a worker or another
    rerun changed since it was listed is left alone, and a batch costs a few
    statements, not one per row. `despite_suppression`: the operator chose
    to send them even to suppressed addresses.
    """
    now = timezone.now()
    old_task_ids = {row.delivery_id: row.task_id for row in batch}
    # In id order: oldest published first, locks taken in one order.
    still_failed = (
        Delivery.objects.select_for_update()
        .filter(pk__in=old_task_ids, status=Delivery.Status.FAILED)
        .order_by("pk")
    )
    rows = [
        Delivery(pk=pk, kind=kind, task_id=str(uuid.uuid4()))
        for pk, kind in still_failed.values_list("pk", "kind")
    ]
    Delivery.objects.filter(pk__in=[row.pk for row in rows]).update(
        status=Delivery.Status.PENDING,
        despite_suppression=despite_suppression,
        lease_expires_at=now + stale_after(),
        updated_at=now,
    )
    Delivery.objects.bulk_update(rows, ["task_id"])
    return [
        RerunJob(PublishJob(row.pk, row.task_id, row.kind), old_task_ids[row.pk])
        for row in rows
    ]


def _unmark_rerun(marked: list[RerunJob]) -> None:
    """Put rows whose publish failed back to failed, unless a worker took them."""
    with transaction.atomic():
        for row in marked:
            Delivery.objects.filter(
                pk=row.job.delivery_id,
                status=Delivery.Status.PENDING,
                task_id=row.job.task_id,
            ).update(status=Delivery.Status.FAILED, task_id=row.old_task_id)
