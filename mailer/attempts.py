"""One send attempt of one outbox row, and what became of it.

`attempt_delivery` takes its turn in the relay's budget, claims the row,
sends the mail and records the result; it returns an outcome that the task
maps to return, retry or raise. The retry or fail decision is made here: a
relay-wide failure parks the mail without spending a retry; a relay that
throttles, or a budget with no turn free within BUDGET_WAIT, sends the mail
back to the queue for a few seconds without spending one either (under a
rate, until shortly before its place in the shared line comes up); a failure
of this mail alone (a 4xx for it) is retried with backoff until
MAILER_MAX_RETRIES; anything else fails at once.
"""

import logging
import random
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError, connection

from mailer import budget, claims, esp, metrics, relay, suppression
from mailer.pool import Connection, NoBudget, pool
from mailer.smtp import ClaimLost, SendFailure

logger = logging.getLogger(__name__)

# Seconds a task may wait for a connection slot or a rate token before it
# goes back to the queue: a worker thread is never held asleep for long.
BUDGET_WAIT = 2.0
# Seconds before a throttled mail comes back (with jitter); at most a quarter
# of the Redis visibility_timeout, so a held copy is never redelivered.
THROTTLE_COUNTDOWN_MIN = 1.0
THROTTLE_COUNTDOWN_MAX = 10.0


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
class Throttled:
    """Back to the queue for `countdown` seconds: the relay's pace; no retry spent."""

    countdown: float
    code: int | None = None
    reason: str = ""
    kind: str | None = None
    name = "throttled"


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


Outcome = Sent | Skipped | Parked | Throttled | RetryAfter | Failed | Suppressed


def attempt_delivery(*, delivery_id: int, task_id: str, retries: int) -> Outcome:
    """Claim, send and record one delivery; `retries` are the task's own."""
    try:
        if relay.relay_is_down(delivery_id):
            return _counted(_park(delivery_id, None, None, "relay down"))
    except DatabaseError as error:
        return _database_retry(error, retries)
    turn = budget.reserve_send(max_wait=BUDGET_WAIT, place=delivery_id)
    if not turn.reserved:
        countdown = turn_countdown(turn.wait)
        return _counted(_budget_spent(delivery_id, "rate", countdown))
    if turn.wait:
        time.sleep(turn.wait)
    started = time.monotonic()
    try:
        smtp = pool.checkout(wait=BUDGET_WAIT)
    except NoBudget as spent:
        countdown = throttle_countdown(THROTTLE_COUNTDOWN_MIN)
        return _counted(_budget_spent(delivery_id, spent.limit, countdown))
    except OSError as error:  # refused, timed out, 421 at the greeting
        return _refused_at_connect(delivery_id, task_id, retries, error, started)
    try:
        return _claim_and_send(smtp, delivery_id, task_id, retries)
    finally:
        pool.checkin(smtp)


def _claim_and_send(
    smtp: Connection, delivery_id: int, task_id: str, retries: int
) -> Outcome:
    try:
        delivery = claims.claim_delivery(delivery_id=delivery_id, task_id=task_id)
    except DatabaseError as error:  # nothing claimed, nothing sent: soon again
        return _database_retry(error, retries)
    if delivery is None:
        return _counted(Skipped())
    if suppression.withhold(delivery):
        return _counted(Suppressed(delivery.kind))
    started = time.monotonic()
    try:
        claims.send_delivery(delivery, smtp=smtp)
    except ClaimLost:
        logger.warning("delivery %s: claim lost before DATA, not sent", delivery_id)
        return _counted(Skipped(delivery.kind))
    except esp.SEND_ERRORS as error:  # every smtplib error, timeouts, resets, ESP
        others = _others_open(mine=smtp.holder is not None)
        outcome = _after_failure(delivery, task_id, error, others_open=others)
        return _counted(outcome, error=error, started=started)
    _record_sent(delivery_id, task_id)
    relay.note_delivered()
    _note_accepted()
    latency = metrics.seconds_since_commit(delivery)
    return _counted(Sent(delivery.kind), started=started, latency=latency)


def _refused_at_connect(
    delivery_id: int, task_id: str, retries: int, error: OSError, started: float
) -> Outcome:
    """A connection the relay would not give: throttled, or claim and judge it.

    A throttled mail goes back unclaimed, the row untouched. Anything else
    is judged as before, on a claimed row: parked for an outage, failed for
    a 5xx or bad credentials.
    """
    others = _others_open(mine=False)
    failure = esp.classify_send_error(error, others_open=others)
    if failure.throttled:
        outcome = _throttled(failure, others_open=others)
        _hold(delivery_id, outcome.countdown)
        return _counted(outcome, error=error, started=started)
    try:
        delivery = claims.claim_delivery(delivery_id=delivery_id, task_id=task_id)
    except DatabaseError as database_error:
        return _database_retry(database_error, retries)
    if delivery is None:
        return _counted(Skipped())
    outcome = _after_failure(delivery, task_id, error, others_open=others)
    return _counted(outcome, error=error, started=started)


def _database_retry(error: DatabaseError, retries: int) -> RetryAfter:
    metrics.record_database_retry()
    countdown = database_countdown(retries)
    return RetryAfter(countdown, None, error, settings.MAILER_MAX_RETRIES)


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


def _after_failure(
    delivery, task_id: str, error: Exception, *, others_open: int
) -> Outcome:
    """Requeue, park, retry or fail a claimed row after SMTP (or an ESP) said no."""
    failure = esp.classify_send_error(error, others_open=others_open)
    if failure.throttled:
        outcome = _throttled(failure, others_open=others_open, kind=delivery.kind)
        requeued = claims.requeue_throttled(
            delivery_id=delivery.pk,
            task_id=task_id,
            countdown=outcome.countdown,
            code=failure.code,
            reason=failure.reason,
        )
        return outcome if requeued else Skipped(delivery.kind)
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


def _throttled(
    failure: SendFailure, *, others_open: int, kind: str | None = None
) -> Throttled:
    """Learn from a throttle reply (cut the limit, log once) and come back later."""
    limit = "connections" if failure.limit == "connections" else "rate"
    metrics.record_throttle(kind=failure.limit)
    change = budget.note_throttled(limit=limit, others_open=others_open)
    if change is not None and change.started:
        logger.warning(
            "relay throttling (%s): %s %s; sending at its pace, no retry spent",
            failure.limit,
            failure.code,
            failure.reason,
        )
    if change is not None and change.changed:
        _log_limits("cut after a throttle reply", change.limits)
    countdown = throttle_countdown(THROTTLE_COUNTDOWN_MIN)
    return Throttled(countdown, failure.code, failure.reason, kind)


def _budget_spent(delivery_id: int, limit: str, countdown: float) -> Throttled:
    """No turn within BUDGET_WAIT: back to the queue for `countdown` seconds."""
    metrics.record_throttle(kind="budget")
    outcome = Throttled(countdown, reason=f"relay budget: {limit}")
    _hold(delivery_id, outcome.countdown)
    return outcome


def _hold(delivery_id: int, countdown: float) -> None:
    """Hold the unclaimed row while its copy waits; a database error only logs.

    Without the hold the row's lease may lapse first and the lifeline
    publishes a second copy (the claim still sends one mail).
    """
    try:
        claims.hold_while_throttled(delivery_id=delivery_id, countdown=countdown)
    except DatabaseError as error:
        logger.warning(
            "delivery %s: throttled, lease not extended: %r", delivery_id, error
        )


def _note_accepted() -> None:
    change = budget.note_accepted()
    if change is not None and change.changed:
        _log_limits("raised after a run of accepted mails", change.limits)


def _log_limits(why: str, limits: budget.Limits) -> None:
    metrics.record_budget(concurrency=limits.concurrency, rate=limits.rate)
    rate = f"{limits.rate:.2f}/s" if limits.rate else "unlimited"
    logger.warning(
        "relay budget %s: %d connections, rate %s", why, limits.concurrency, rate
    )


def _others_open(*, mine: bool) -> int:
    """Connections of ours to the relay besides this attempt's (0 if unknown)."""
    count = budget.open_connections()
    if count is None:
        return 0
    return max(0, count - (1 if mine else 0))


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


def throttle_countdown(wait: float) -> float:
    """Seconds until a throttled mail comes back: about `wait`, with jitter, bounded."""
    ceiling = _countdown_ceiling()
    low = min(max(wait, THROTTLE_COUNTDOWN_MIN), ceiling)
    return min(low + random.uniform(0, low), ceiling)


def turn_countdown(wait: float) -> float:
    """Seconds until a mail waiting in line comes back: before its turn.

    `wait` is how far away its own turn is (mailer.budget.reserve_send): it
    comes back when that turn is BUDGET_WAIT or a little more away, so it
    is there to take it even if the rate rose meanwhile (a turn nobody is
    there to take is lost), and asks again at least every
    THROTTLE_COUNTDOWN_MAX seconds, keeping its place.
    """
    back = (wait - BUDGET_WAIT) * random.uniform(0.8, 1.0)
    return min(max(back, THROTTLE_COUNTDOWN_MIN), _countdown_ceiling())


def _countdown_ceiling() -> float:
    """THROTTLE_COUNTDOWN_MAX, or a quarter of the Redis visibility_timeout."""
    options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {})
    return min(THROTTLE_COUNTDOWN_MAX, options.get("visibility_timeout", 3600) / 4)


def database_countdown(retries: int) -> float:
    """Seconds, not the mail backoff: a database blip (a killed backend) is short."""
    ceiling = min(settings.MAILER_LEASE, 2.0**retries)
    return ceiling / 2 + random.uniform(0, ceiling / 2)
