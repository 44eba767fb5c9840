"""Celery tasks: serialization, retries and logging around the mailer services.

A task is like a view: it takes an id, calls one service and maps what came
back to Celery's return, retry or raise.
"""

import logging
import time

from celery import Task, shared_task
from celery.signals import worker_process_shutdown, worker_shutdown

from mailer import attempts, batching, sweeper
from mailer.dispatch import WAITED_PRIORITY
from mailer.pool import pool

logger = logging.getLogger(__name__)

SEND_OPTIONS = {
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "retry_on_worker_lost": True,
    "max_retries": None,  # mails count their retries on the row (mailer.attempts)
}


@shared_task(**SEND_OPTIONS)
def send_welcome_email(self: Task, delivery_id: int) -> str:
    """Send the welcome mail of one outbox row, at most once.

    Returns "sent", "skipped" when another attempt owns or finished the row,
    or "parked" when the relay is down and the mail waits for it; a mail
    the relay throttles comes back in a few seconds (a retry of the task
    that spends none of the row's). Messages
    queued for other kinds under this name, before they had their own task,
    are sent too: the row says what it is.
    """
    return _send(self, delivery_id)


@shared_task(**SEND_OPTIONS)
def send_account_mail(self: Task, delivery_id: int) -> str:
    """Send an account-exists notice or a new activation link, at most once."""
    return _send(self, delivery_id)


def _send(task: Task, delivery_id: int) -> str:
    started = time.monotonic()
    outcome = batching.outcome_for(task.request.id)  # a batch ran this attempt
    if outcome is None:
        outcome = attempts.attempt_delivery(
            delivery_id=delivery_id,
            task_id=task.request.id,
            retries=task.request.retries,
        )
    _log(task.request, delivery_id, outcome, time.monotonic() - started)
    if isinstance(outcome, attempts.Throttled):
        raise task.retry(
            countdown=outcome.countdown, max_retries=None, priority=WAITED_PRIORITY
        )
    if isinstance(outcome, attempts.RetryAfter):
        raise task.retry(
            exc=outcome.error,
            countdown=outcome.countdown,
            max_retries=outcome.max_retries,
            priority=WAITED_PRIORITY,
        ) from outcome.error
    if isinstance(outcome, attempts.Failed):
        raise outcome.error
    return outcome.name


def _log(request, delivery_id: int, outcome: attempts.Outcome, elapsed: float) -> None:
    fields = {
        "kind": outcome.kind or "-",
        "delivery": delivery_id,
        "task": request.id,
        "attempt": request.retries + 1,
        "outcome": outcome.name,
        "smtp_code": outcome.code,
        "duration_ms": round(elapsed * 1000, 1),
    }
    line = (
        "%(kind)s mail delivery=%(delivery)s task=%(task)s attempt=%(attempt)s "
        "outcome=%(outcome)s smtp_code=%(smtp_code)s duration_ms=%(duration_ms)s"
    )
    countdown = getattr(outcome, "countdown", None)
    if countdown is not None:  # Celery's own "Retry in" line is off (settings)
        fields["retry_in_s"] = round(countdown, 1)
        line += " retry_in_s=%(retry_in_s)s"
    logger.info(line, fields, extra={"mail": fields})


@shared_task(ignore_result=True)
def sweep_stale_deliveries() -> dict[str, int]:
    """Re-dispatch outbox rows left pending or sending past their lease (beat)."""
    report = sweeper.sweep_stale_deliveries()
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
    pool.stop()
