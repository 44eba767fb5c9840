"""The outbox: create a delivery, dispatch it, claim it, send it, record it."""

import functools
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import make_msgid

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, models, transaction
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone

from mailer.messages import build_message
from mailer.models import Delivery
from mailer.smtp import ReusedConnection

logger = logging.getLogger(__name__)


def create_welcome_delivery(*, user_id: int) -> Delivery:
    """Write the outbox row owed to a new user; call inside their transaction."""
    return Delivery.objects.create(
        user_id=user_id,
        kind=Delivery.Kind.WELCOME,
        task_id=str(uuid.uuid4()),
        message_id=make_msgid(idstring="welcome", domain=_sender_domain()),
        lease_expires_at=timezone.now() + _stale_after(),
    )


def create_repeatable_delivery(*, user_id: int, kind: str) -> Delivery | None:
    """Write an outbox row of a kind a person can trigger again and again.

    None when the user got one of this kind within its interval
    (MAILER_NOTICE_INTERVAL, MAILER_ACTIVATION_RESEND_INTERVAL): a stranger
    repeating a registration or a resend cannot flood their inbox. Call
    inside the transaction that holds the user's row lock.
    """
    interval = {
        Delivery.Kind.ACCOUNT_EXISTS: settings.MAILER_NOTICE_INTERVAL,
        Delivery.Kind.ACTIVATION: settings.MAILER_ACTIVATION_RESEND_INTERVAL,
    }[kind]
    since = timezone.now() - timedelta(seconds=interval)
    recent = Delivery.objects.filter(user_id=user_id, kind=kind, created_at__gt=since)
    if recent.exists():
        return None
    return Delivery.objects.create(
        user_id=user_id,
        kind=kind,
        task_id=str(uuid.uuid4()),
        message_id=make_msgid(idstring=kind, domain=_sender_domain()),
        lease_expires_at=timezone.now() + _stale_after(),
    )


def dispatch_delivery(delivery_id: int, task_id: str | None = None) -> str:
    """Publish the send task for a delivery; return the task id it went with."""
    from mailer.tasks import send_welcome_email

    task_id = task_id or str(uuid.uuid4())
    send_welcome_email.apply_async(args=(delivery_id,), task_id=task_id)
    return task_id


def dispatch_after_commit(delivery_id: int, task_id: str) -> None:
    """Publish a committed row's task; on a broker error log it and move on.

    The row stays pending and the sweeper dispatches it later, so a broker
    outage never turns a committed registration into an error. (Django 5.2's
    `robust=True` would log `func.__qualname__`, which a partial lacks.)
    """
    try:
        dispatch_delivery(delivery_id, task_id)
    except Exception:  # noqa: BLE001 - the row and the sweeper cover any failure
        logger.exception(
            "Dispatch of delivery %s failed; left pending for the sweeper", delivery_id
        )
        _make_due(delivery_id)


def _make_due(delivery_id: int) -> None:
    """Let the next rescue publish a row whose dispatch failed, not the backstop.

    A worker's lifeline publishes due rows seconds after the broker answers
    again; if this write fails too, the row keeps its MAILER_STALE_AFTER lease.
    """
    try:
        Delivery.objects.filter(pk=delivery_id, status=Delivery.Status.PENDING).update(
            lease_expires_at=Now()
        )
    except Exception:  # noqa: BLE001 - the backstop lease still covers the row
        logger.exception("Could not mark delivery %s due", delivery_id)


def claim_delivery(*, delivery_id: int, task_id: str) -> Delivery | None:
    """Take a pending row for one send attempt; None when someone else has it.

    A conditional UPDATE, atomic on every backend: of many copies of one
    task message, exactly one moves the row from pending to sending. The
    lease is MAILER_LEASE on the database's clock; the worker's lifeline
    renews it while the attempt runs.
    """
    now = timezone.now()
    if connection.vendor == "postgresql":
        return _claim_returning(delivery_id, task_id, now=now)
    claimed = Delivery.objects.filter(
        pk=delivery_id, status=Delivery.Status.PENDING
    ).update(
        status=Delivery.Status.SENDING,
        waiting_for_relay=False,
        task_id=task_id,
        attempts=F("attempts") + 1,
        lease_expires_at=Now() + _lease(),
        updated_at=now,
    )
    if not claimed:
        return None
    return Delivery.objects.select_related("user").get(pk=delivery_id)


def _claim_returning(
    delivery_id: int, task_id: str, *, now: datetime
) -> Delivery | None:
    """The same claim in one round trip: UPDATE ... FROM ... RETURNING the user.

    PostgreSQL only (SQLite's RETURNING cannot name the FROM table). Saves
    the SELECT after the UPDATE: about half a millisecond of worker CPU per
    mail (bench/, docs/BENCHMARKS.md).
    """
    params = [
        Delivery.Status.SENDING.value,
        task_id,
        _lease(),
        now,
        delivery_id,
        Delivery.Status.PENDING.value,
    ]
    # A raw User query converts the user's columns; the row's own come along.
    user = next(iter(get_user_model().objects.raw(_claim_sql(), params)), None)
    if user is None:
        return None
    loaded = {
        "id": delivery_id,
        "user_id": user.pk,
        "kind": user.claimed_kind,
        "status": Delivery.Status.SENDING,
        "task_id": task_id,
        "attempts": user.claimed_attempts,
        "retries": user.claimed_retries,
        "message_id": user.claimed_message_id,
    }
    # from_db takes the loaded values in the model's field order.
    names = [f.attname for f in Delivery._meta.concrete_fields if f.attname in loaded]
    delivery = Delivery.from_db(
        connection.alias, names, [loaded[name] for name in names]
    )
    delivery.user = user
    return delivery


@functools.cache
def _claim_sql() -> str:
    quote = connection.ops.quote_name
    delivery = quote(Delivery._meta.db_table)
    user = quote(get_user_model()._meta.db_table)
    user_columns = ", ".join(
        f"u.{quote(name)}"
        for name in ("id", "email", "password", "is_active", "activated_at")
    )
    return (
        f"UPDATE {delivery} AS d SET status = %s, waiting_for_relay = false, "
        "task_id = %s, "
        "attempts = d.attempts + 1, lease_expires_at = STATEMENT_TIMESTAMP() + %s, "
        f"updated_at = %s FROM {user} AS u WHERE d.id = %s AND d.status = %s "
        "AND u.id = d.user_id "
        f"RETURNING {user_columns}, d.kind AS claimed_kind, "
        "d.attempts AS claimed_attempts, d.retries AS claimed_retries, "
        "d.message_id AS claimed_message_id"
    )


def send_delivery(delivery: Delivery) -> None:
    """Render the mail for a claimed row (by its kind) and hand it to SMTP.

    Right before DATA the attempt checks that it still holds the row (a
    fencing token): a worker frozen past its lease and resumed sends nothing.
    Raises `ClaimLost` then.
    """
    fence = functools.partial(
        hold_claim, delivery_id=delivery.pk, task_id=delivery.task_id
    )
    ReusedConnection.send(build_message(delivery), fence=fence)


def hold_claim(*, delivery_id: int, task_id: str) -> bool:
    """Renew an attempt's lease if it still holds the row; False if it lost it.

    The lease must not have run out: a row past its lease may already be
    another worker's, even before the rescue has moved it.
    """
    return bool(
        _claimed_by(delivery_id, task_id)
        .filter(lease_expires_at__gt=Now())
        .update(lease_expires_at=Now() + _lease())
    )


def mark_sent(*, delivery_id: int, task_id: str) -> bool:
    """Record a delivery the relay accepted; False if the claim was lost."""
    now = timezone.now()
    return bool(
        _claimed_by(delivery_id, task_id).update(
            status=Delivery.Status.SENT,
            sent_at=now,
            smtp_code=250,
            last_error="",
            updated_at=now,
        )
    )


def mark_retrying(
    *, delivery_id: int, task_id: str, countdown: float, code: int | None, reason: str
) -> None:
    """Hand a claimed row back to pending until its retry is due; count it.

    If the retry's message is lost, the row is due MAILER_LEASE after the
    retry would have run.
    """
    _claimed_by(delivery_id, task_id).update(
        status=Delivery.Status.PENDING,
        retries=F("retries") + 1,
        smtp_code=code,
        last_error=reason,
        lease_expires_at=Now() + timedelta(seconds=countdown) + _lease(),
        updated_at=timezone.now(),
    )


def park_for_relay(
    *, delivery_id: int, task_id: str | None, code: int | None, reason: str
) -> bool:
    """Set a row aside until the relay answers again, spending no retry.

    A claimed row (`task_id` given) goes back from sending; an unclaimed one
    is parked as it is. The lease is the backstop if no release ever comes:
    MAILER_STALE_AFTER, and at least the longest probe interval, so that a
    parked row is not re-dispatched while the relay is still being probed.
    False if the row was neither (sent, or someone else's).
    """
    backstop = max(
        settings.MAILER_STALE_AFTER, settings.MAILER_RELAY_PROBE_INTERVAL_MAX
    )
    if task_id is None:
        rows = Delivery.objects.filter(pk=delivery_id, status=Delivery.Status.PENDING)
    else:
        rows = _claimed_by(delivery_id, task_id)
    return bool(
        rows.update(
            status=Delivery.Status.PENDING,
            waiting_for_relay=True,
            smtp_code=code,
            last_error=reason,
            lease_expires_at=Now() + timedelta(seconds=backstop),
            updated_at=timezone.now(),
        )
    )


def release_parked() -> int:
    """Make every row parked for the relay due now; return how many."""
    return Delivery.objects.filter(
        status=Delivery.Status.PENDING, waiting_for_relay=True
    ).update(waiting_for_relay=False, lease_expires_at=Now())


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
    return held.update(lease_expires_at=Now() + _lease())


def make_pending_due() -> int:
    """Make every pending row due now: the broker lost its queue."""
    return Delivery.objects.filter(
        status=Delivery.Status.PENDING, waiting_for_relay=False
    ).update(lease_expires_at=Now())


def mark_failed(
    *, delivery_id: int, task_id: str, code: int | None, reason: str
) -> None:
    """Record a delivery that will not be retried, with the relay's reason."""
    _claimed_by(delivery_id, task_id).update(
        status=Delivery.Status.FAILED,
        smtp_code=code,
        last_error=reason,
        updated_at=timezone.now(),
    )


class BrokerUnreachable(Exception):
    """The broker did not answer within the check's timeout."""


def check_broker(*, timeout: float, url: str | None = None) -> None:
    """Open one connection to the broker; raise BrokerUnreachable if it fails.

    Connecting to Redis pings it, so a stopped or frozen server fails here
    within about `timeout` seconds instead of in the middle of a publish.
    """
    from mailer.tasks import send_welcome_email

    connection = send_welcome_email.app.connection_for_write(
        url,
        connect_timeout=timeout,
        transport_options={
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
        },
    )
    try:
        connection.ensure_connection(max_retries=0, timeout=timeout)
    except Exception as error:  # noqa: BLE001 - any failure means unreachable
        raise BrokerUnreachable(type(error).__name__) from error
    finally:
        connection.release()


def publish_deliveries(jobs: list[tuple[int, str]]) -> None:
    """Publish one send task per (delivery id, task id), pipelined.

    One pooled producer and kombu's publish batch: the messages go to Redis
    in a few round trips. Raises on any broker error; a batch that failed
    may have been partly delivered (the claim makes a stray copy harmless).
    """
    from mailer.tasks import send_welcome_email

    with send_welcome_email.app.producer_or_acquire() as producer:
        with producer.batch(max_size=PUBLISH_BATCH_SIZE):
            for delivery_id, task_id in jobs:
                send_welcome_email.apply_async(
                    args=(delivery_id,),
                    task_id=task_id,
                    producer=producer,
                    retry=False,
                )


PUBLISH_BATCH_SIZE = 1000
SWEEP_BATCH_SIZE = 500


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
        jobs = _lease_due_deliveries(limit=batch_size)
        if jobs:
            try:
                publish_deliveries([(job[0], job[1]) for job in jobs])
            except Exception as error:  # noqa: BLE001 - due again for the next sweep
                logger.warning(
                    "Sweep could not publish %d deliveries: %r", len(jobs), error
                )
                _release_leases(jobs)
                report.not_published.extend(job[0] for job in jobs)
                break
            report.redispatched.extend(job[0] for job in jobs)
        if len(jobs) < batch_size:
            break
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
def _lease_due_deliveries(*, limit: int) -> list[tuple]:
    """Give due pending rows a new task id and lease.

    Returns (id, new task id, old lease, old task id) for each row taken.
    Each row is taken with a compare-and-set on its old task id, so of two
    sweeps running at once only one takes it.
    """
    due = Delivery.objects.filter(
        status=Delivery.Status.PENDING, lease_expires_at__lt=Now()
    ).order_by("lease_expires_at")
    now = timezone.now()
    lease = Now() + _stale_after()
    jobs = []
    rows = due.values_list("pk", "lease_expires_at", "task_id")[:limit]
    for pk, old_lease, old_task_id in rows:
        task_id = str(uuid.uuid4())
        taken = Delivery.objects.filter(
            pk=pk,
            status=Delivery.Status.PENDING,
            task_id=old_task_id,
            lease_expires_at__lt=Now(),
        ).update(
            task_id=task_id,
            waiting_for_relay=False,
            lease_expires_at=lease,
            updated_at=now,
        )
        if taken:
            jobs.append((pk, task_id, old_lease, old_task_id))
    return jobs


def _release_leases(jobs: list[tuple]) -> None:
    """Make rows whose publish failed due again, unless a worker took them."""
    for pk, task_id, old_lease, old_task_id in jobs:
        Delivery.objects.filter(
            pk=pk, status=Delivery.Status.PENDING, task_id=task_id
        ).update(lease_expires_at=old_lease, task_id=old_task_id)


BROKER_CHECK_TIMEOUT = 2.0  # seconds


def oldest_undelivered_age() -> float | None:
    """Seconds since the oldest pending or sending row was created; None if none."""
    oldest = (
        Delivery.objects.filter(
            status__in=[Delivery.Status.PENDING, Delivery.Status.SENDING]
        )
        .order_by("created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    if oldest is None:
        return None
    return round((timezone.now() - oldest).total_seconds(), 1)


class UnknownDeliveries(ValueError):
    """Some of the delivery ids asked for do not exist."""

    def __init__(self, ids: list[int]) -> None:
        super().__init__(ids)
        self.ids = ids


@dataclass(frozen=True)
class FailedDelivery:
    """A failed outbox row as an operator sees it before a rerun."""

    delivery_id: int
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
) -> ResendReport:
    """Rerun failed rows: back to pending with a new task id, published in batches.

    Only failed rows are rerun; asked-for rows in another state are reported
    as skipped (a sent row is never resent). The broker is checked before any
    row changes; a batch whose publish fails goes back to failed, so no row is
    left marked for a rerun that was never published. Raises
    `UnknownDeliveries`, `BrokerUnreachable` or `ResendInterrupted`.
    """
    report = ResendReport(dry_run=dry_run)
    failed = Delivery.objects.filter(status=Delivery.Status.FAILED)
    if ids:
        report.skipped = _skipped_by_id(ids)
        failed = failed.filter(pk__in=ids)
    if since is not None:
        failed = failed.filter(updated_at__gte=since)
    candidates = _failed_deliveries(failed.order_by("pk")[:limit])
    if dry_run or not candidates:
        report.rerun = candidates
        return report
    check_broker(timeout=BROKER_CHECK_TIMEOUT)
    for start in range(0, len(candidates), PUBLISH_BATCH_SIZE):
        batch = candidates[start : start + PUBLISH_BATCH_SIZE]
        jobs = _mark_for_rerun(batch)
        try:
            publish_deliveries([(pk, task_id) for pk, task_id, _ in jobs])
        except Exception as error:  # noqa: BLE001 - any publish error: undo the batch
            _unmark_rerun(jobs)
            logger.exception("Rerun publish failed; batch put back to failed")
            raise ResendInterrupted(report, len(candidates) - start) from error
        rerun_ids = {pk for pk, _, _ in jobs}
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
    }
    for pk, status in sorted(statuses.items()):
        if status != Delivery.Status.FAILED:
            skipped.setdefault(reasons[status], []).append(pk)
    return skipped


def _failed_deliveries(rows) -> list[FailedDelivery]:
    """Describe failed rows with the failed task result stored for each."""
    rows = list(
        rows.values_list(
            "pk", "user__email", "updated_at", "smtp_code", "last_error", "task_id"
        )
    )
    results = failed_task_results([row[-1] for row in rows if row[-1]])
    return [FailedDelivery(*row, task_result=results.get(row[-1], "")) for row in rows]


def failed_task_results(task_ids: list[str]) -> dict[str, str]:
    """Map task ids to the exception their failed django-celery-results row holds."""
    from django_celery_results.models import TaskResult

    found = {}
    for start in range(0, len(task_ids), 500):
        chunk = task_ids[start : start + 500]
        for task_id, result in TaskResult.objects.filter(
            task_id__in=chunk, status="FAILURE"
        ).values_list("task_id", "result"):
            found[task_id] = _describe_exception(result)
    return found


def _describe_exception(result: str | None) -> str:
    try:
        data = json.loads(result or "")
        message = data.get("exc_message")
        if isinstance(message, list | tuple):
            message = ", ".join(map(str, message))
        return f"{data.get('exc_type', 'error')}: {message}"
    except (ValueError, AttributeError):
        return (result or "")[:200]


@transaction.atomic
def _mark_for_rerun(batch: list[FailedDelivery]) -> list[tuple[int, str, str]]:
    """Move still-failed rows back to pending with new task ids; return jobs.

    The batch's rows are locked first (SELECT ... FOR UPDATE; on SQLite the
    IMMEDIATE transaction holds the write lock), so a row a worker or another
    rerun changed since it was listed is left alone, and a batch costs a few
    statements, not one per row.
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
        Delivery(pk=pk, task_id=str(uuid.uuid4()))
        for pk in still_failed.values_list("pk", flat=True)
    ]
    Delivery.objects.filter(pk__in=[row.pk for row in rows]).update(
        status=Delivery.Status.PENDING,
        lease_expires_at=now + _stale_after(),
        updated_at=now,
    )
    Delivery.objects.bulk_update(rows, ["task_id"])
    return [(row.pk, row.task_id, old_task_ids[row.pk]) for row in rows]


def _unmark_rerun(jobs: list[tuple[int, str, str]]) -> None:
    """Put rows whose publish failed back to failed, unless a worker took them."""
    with transaction.atomic():
        for pk, task_id, old_task_id in jobs:
            Delivery.objects.filter(
                pk=pk, status=Delivery.Status.PENDING, task_id=task_id
            ).update(status=Delivery.Status.FAILED, task_id=old_task_id)


def _claimed_by(delivery_id: int, task_id: str):
    return Delivery.objects.filter(
        pk=delivery_id, status=Delivery.Status.SENDING, task_id=task_id
    )


def _stale_after() -> timedelta:
    return timedelta(seconds=settings.MAILER_STALE_AFTER)


def _lease() -> timedelta:
    return timedelta(seconds=settings.MAILER_LEASE)


def _sender_domain() -> str:
    # make_msgid() without a domain resolves the host name: a DNS lookup.
    address = settings.DEFAULT_FROM_EMAIL.rsplit("<", 1)[-1].rstrip(">")
    return address.rpartition("@")[2] or "localhost"
