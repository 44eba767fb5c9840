"""Celery tasks: serialization, retries and logging around the mailer services."""

import logging
import random
import time

from celery import Task, shared_task
from celery.signals import worker_process_shutdown, worker_shutdown
from django.conf import settings
from django.db import DatabaseError, connection

from mailer import metrics, services
from mailer.smtp import ReusedConnection, classify_smtp_error

logger = logging.getLogger(__name__)


@shared_task(
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    retry_on_worker_lost=True,
    max_retries=None,  # counted against MAILER_MAX_RETRIES below, read at run time
)
def send_welcome_email(self: Task, delivery_id: int) -> str:
    """Send the welcome mail of one outbox row, at most once.

    Returns "sent", or "skipped" when another attempt owns or finished the row.
    """
    task_id = self.request.id
    try:
        delivery = services.claim_delivery(delivery_id=delivery_id, task_id=task_id)
    except DatabaseError as error:  # nothing claimed, nothing sent: try later
        retries = self.request.retries
        _log(delivery_id, task_id, retries, "database-retry", None, 0.0)
        metrics.record_database_retry()
        raise self.retry(
            exc=error,
            countdown=retry_countdown(retries),
            max_retries=settings.MAILER_MAX_RETRIES,
        ) from error
    if delivery is None:
        _log(delivery_id, task_id, self.request.retries, "skipped", None, 0.0)
        metrics.record_attempt(kind="unknown", outcome="skipped")
        return "skipped"
    started = time.monotonic()
    try:
        services.send_delivery(delivery)
    except OSError as error:  # every smtplib error, timeouts, resets
        failure = classify_smtp_error(error)
        elapsed = time.monotonic() - started
        retries = self.request.retries
        if failure.transient and retries < settings.MAILER_MAX_RETRIES:
            countdown = retry_countdown(retries)
            services.mark_retrying(
                delivery_id=delivery_id,
                task_id=task_id,
                countdown=countdown,
                code=failure.code,
                reason=failure.reason,
            )
            _log(delivery_id, task_id, retries, "retry", failure.code, elapsed)
            metrics.record_attempt(
                kind=delivery.kind,
                outcome="retry",
                smtp_class=metrics.smtp_class_of(error, failure.code),
                duration=elapsed,
            )
            raise self.retry(
                exc=error, countdown=countdown, max_retries=None
            ) from error
        services.mark_failed(
            delivery_id=delivery_id,
            task_id=task_id,
            code=failure.code,
            reason=failure.reason,
        )
        _log(delivery_id, task_id, retries, "failed", failure.code, elapsed)
        metrics.record_attempt(
            kind=delivery.kind,
            outcome="failed",
            smtp_class=metrics.smtp_class_of(error, failure.code),
            duration=elapsed,
        )
        raise
    _record_sent(delivery_id, task_id)
    metrics.record_attempt(
        kind=delivery.kind,
        outcome="sent",
        smtp_class="2xx",
        duration=time.monotonic() - started,
        latency=metrics.seconds_since_commit(delivery),
    )
    _log(
        delivery_id,
        task_id,
        self.request.retries,
        "sent",
        250,
        time.monotonic() - started,
    )
    return "sent"


def _record_sent(delivery_id: int, task_id: str) -> None:
    """Record an accepted mail, riding out a short database outage.

    The relay already has the mail; giving up here leaves the row to the
    sweeper, which would send it again, so keep trying for a while.
    """
    deadline = time.monotonic() + settings.MAILER_STALE_AFTER / 2
    while True:
        try:
            services.mark_sent(delivery_id=delivery_id, task_id=task_id)
            return
        except DatabaseError:
            if time.monotonic() > deadline:
                raise
            logger.warning(
                "Recording delivery %s as sent failed; retrying", delivery_id
            )
            if not connection.in_atomic_block:
                connection.close_if_unusable_or_obsolete()  # reconnect next time
            time.sleep(0.5)


def retry_countdown(retries: int) -> float:
    """Exponential backoff from MAILER_RETRY_BACKOFF, capped, with equal jitter."""
    ceiling = min(
        settings.MAILER_RETRY_BACKOFF_MAX, settings.MAILER_RETRY_BACKOFF * 2**retries
    )
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _log(delivery_id, task_id, retries, outcome, code, elapsed) -> None:
    logger.info(
        "welcome_email delivery=%s task=%s attempt=%s outcome=%s smtp_code=%s "
        "duration_ms=%.1f",
        delivery_id,
        task_id,
        retries + 1,
        outcome,
        code,
        elapsed * 1000,
    )


@shared_task(ignore_result=True)
def sweep_stale_deliveries() -> dict[str, int]:
    """Re-dispatch outbox rows left pending or sending past their lease (beat)."""
    report = services.sweep_stale_deliveries()
    metrics.record_sweep(
        reclaimed=report.reclaimed,
        redispatched=len(report.redispatched),
        not_published=len(report.not_published),
    )
    level = (
        logging.WARNING if report.redispatched or report.not_published else logging.INFO
    )
    logger.log(
        level,
        "sweep reclaimed=%d redispatched=%d not_published=%d deliveries=%s",
        report.reclaimed,
        len(report.redispatched),
        len(report.not_published),
        ",".join(map(str, report.redispatched + report.not_published)) or "-",
    )
    return {
        "reclaimed": report.reclaimed,
        "redispatched": len(report.redispatched),
        "not_published": len(report.not_published),
    }


@worker_shutdown.connect
@worker_process_shutdown.connect
def close_smtp_connections(**kwargs) -> None:
    """Say QUIT to the relay on every connection this worker kept open."""
    ReusedConnection.close_all()
