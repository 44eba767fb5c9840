"""Celery tasks: serialization, retries and logging around the mailer services."""

import logging
import time

from celery import Task, shared_task
from celery.signals import worker_process_shutdown, worker_shutdown

from mailer import attempts, services
from mailer.smtp import ReusedConnection

logger = logging.getLogger(__name__)


@shared_task(
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    retry_on_worker_lost=True,
    max_retries=None,  # mails count their retries on the row (mailer.attempts)
)
def send_welcome_email(self: Task, delivery_id: int) -> str:
    """Send the mail of one outbox row, at most once.

    Returns "sent", "skipped" when another attempt owns or finished the row,
    or "parked" when the relay is down and the mail waits for it.
    """
    started = time.monotonic()
    outcome = attempts.attempt_delivery(
        delivery_id=delivery_id, task_id=self.request.id, retries=self.request.retries
    )
    _log(self.request, delivery_id, outcome, time.monotonic() - started)
    if isinstance(outcome, attempts.RetryAfter):
        raise self.retry(
            exc=outcome.error,
            countdown=outcome.countdown,
            max_retries=outcome.max_retries,
        ) from outcome.error
    if isinstance(outcome, attempts.Failed):
        raise outcome.error
    return outcome.name


def _log(request, delivery_id: int, outcome: attempts.Outcome, elapsed: float) -> None:
    logger.info(
        "welcome_email delivery=%s task=%s attempt=%s outcome=%s smtp_code=%s "
        "duration_ms=%.1f",
        delivery_id,
        request.id,
        request.retries + 1,
        outcome.name,
        250 if isinstance(outcome, attempts.Sent) else getattr(outcome, "code", None),
        elapsed * 1000,
    )


@shared_task(ignore_result=True)
def sweep_stale_deliveries() -> dict[str, int]:
    """Re-dispatch outbox rows left pending or sending past their lease (beat)."""
    report = services.sweep_stale_deliveries()
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
