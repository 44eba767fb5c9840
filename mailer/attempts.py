"""One send attempt of one outbox row, and what became of it.

`attempt_delivery` claims the row, sends the mail and records the result; it
returns an outcome that the task maps to return, retry or raise. The retry
or fail decision is made here: a relay-wide failure parks the mail without
spending a retry; a failure of this mail alone (a 4xx for it) is retried
with backoff until MAILER_MAX_RETRIES; anything else fails at once.
"""

import logging
import random
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError, connection

from mailer import claims, esp, metrics, relay, suppression
from mailer.smtp import ClaimLost

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sent:
    kind: str
    name = "sent"
    code = 250


@dataclass(frozen=True)
class Skipped:
    """Another attempt owns or finished the row (its kind unknown if unclaimed)."""

    kind: str | None = None
    name = "skipped"
    code = None


@dataclass(frozen=True)
class Parked:
    """Set aside until the relay answers again; no retry spent."""

    code: int | None
    reason: str
    kind: str | None = None
    name = "parked"


@dataclass(frozen=True)
class RetryAfter:
    countdown: float
    code: int | None
    error: Exception
    # None: the row counts this mail's retries; a number: the task's own do.
    max_retries: int | None = None
    kind: str | None = None
    name = "retry"


@dataclass(frozen=True)
class Failed:
    code: int | None
    reason: str
    error: Exception
    kind: str
    name = "failed"


@dataclass(frozen=True)
class Suppressed:
    """Not sent: the address is on the suppression list (mailer/suppression.py)."""

    kind: str
    name = "suppressed"
    code = None


Outcome = Sent | Skipped | Parked | RetryAfter | Failed | Suppressed


def attempt_delivery(*, delivery_id: int, task_id: str, retries: int) -> Outcome:
    """Claim, send and record one delivery; `retries` are the task's own."""
    try:
        if relay.relay_is_down():
            return _counted(_park(delivery_id, None, None, "relay down"))
        delivery = claims.claim_delivery(delivery_id=delivery_id, task_id=task_id)
    except DatabaseError as error:  # nothing claimed, nothing sent: soon again
        metrics.record_database_retry()
        countdown = database_countdown(retries)
        return RetryAfter(countdown, None, error, settings.MAILER_MAX_RETRIES)
    if delivery is None:
        return _counted(Skipped())
    if suppression.withhold(delivery):
        return _counted(Suppressed(delivery.kind))
    started = time.monotonic()
    try:
        claims.send_delivery(delivery)
    except ClaimLost:
        logger.warning("delivery %s: claim lost before DATA, not sent", delivery_id)
        return _counted(Skipped(delivery.kind))
    except esp.SEND_ERRORS as error:  # every smtplib error, timeouts, resets, ESP
        outcome = _after_failure(delivery, task_id, error)
        return _counted(outcome, error=error, started=started)
    _record_sent(delivery_id, task_id)
    relay.note_delivered()
    latency = metrics.seconds_since_commit(delivery)
    return _counted(Sent(delivery.kind), started=started, latency=latency)


def _counted(outcome: Outcome, *, error=None, started=None, latency=None) -> Outcome:
    """Count the outcome in the worker's metrics (mailer.metrics) and pass it on."""
    talked = started is not None  # an SMTP exchange happened
    metrics.record_attempt(
        kind=outcome.kind or "unknown",
        outcome=outcome.name,
        smtp_class=metrics.smtp_class_of(error, outcome.code) if talked else None,
        duration=time.monotonic() - started if talked else None,
        latency=latency,
    )
    return outcome


def _after_failure(delivery, task_id: str, error: Exception) -> Outcome:
    """Park, retry or fail a claimed row after SMTP (or an ESP) said no."""
    failure = esp.classify_send_error(error)
    if failure.relay_wide:
        relay.note_down(failure.reason)
        return _park(delivery.pk, task_id, failure.code, failure.reason, delivery.kind)
    if failure.transient and delivery.retries < settings.MAILER_MAX_RETRIES:
        countdown = retry_countdown(delivery.retries)
        claims.mark_retrying(
            delivery_id=delivery.pk,
            task_id=task_id,
            countdown=countdown,
            code=failure.code,
            reason=failure.reason,
        )
        return RetryAfter(countdown, failure.code, error, kind=delivery.kind)
    if not failure.transient:
        esp.suppress_after_failure(address=delivery.user.email, error=error)
    claims.mark_failed(
        delivery_id=delivery.pk,
        task_id=task_id,
        code=failure.code,
        reason=failure.reason,
    )
    return Failed(failure.code, failure.reason, error, delivery.kind)


def _park(delivery_id, task_id, code, reason, kind=None) -> Parked | Skipped:
    parked = claims.park_for_relay(
        delivery_id=delivery_id, task_id=task_id, code=code, reason=reason
    )
    return Parked(code, reason, kind) if parked else Skipped(kind)


def _record_sent(delivery_id: int, task_id: str) -> None:
    """Record an accepted mail, riding out a short database outage.

    The relay already has the mail; giving up here leaves the row to the
    rescue, which would send it again, so keep trying for a while.
    """
    deadline = time.monotonic() + settings.MAILER_STALE_AFTER / 2
    while True:
        try:
            if not claims.mark_sent(delivery_id=delivery_id, task_id=task_id):
                logger.warning(
                    "delivery %s: sent, but its claim had passed to another "
                    "attempt (a possible duplicate)",
                    delivery_id,
                )
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


def database_countdown(retries: int) -> float:
    """Seconds, not the mail backoff: a database blip (a killed backend) is short."""
    ceiling = min(settings.MAILER_LEASE, 2.0**retries)
    return ceiling / 2 + random.uniform(0, ceiling / 2)
