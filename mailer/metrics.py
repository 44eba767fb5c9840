"""The mailer's worker-side metrics and the few functions that record them.

Tasks call `record_attempt`, `record_database_retry` and `record_sweep`;
nothing else in the mailer touches prometheus-client, so the hooks move
with the task code. Every label takes values from a fixed set (listed in
docs/monitoring.md): a value outside it is counted as "other", never as
itself, so no address, token or id can become a label.
"""

import logging
import smtplib
from datetime import datetime

from celery.signals import worker_process_shutdown, worker_shutdown
from django.db import DatabaseError
from django.utils import timezone
from prometheus_client import Counter, Gauge, Histogram

from project.prometheus import configure_metrics, mark_this_process_dead

logger = logging.getLogger(__name__)

configure_metrics()

KINDS = frozenset({"welcome", "account_exists", "activation", "unknown"})
# "deferred" / "parked": a mail held back while the relay is down (the
# recovery work names it "parked"; both stay countable while it settles).
OUTCOMES = frozenset(
    {
        "sent",
        "retry",
        "failed",
        "skipped",
        "deferred",
        "parked",
        "throttled",
        "suppressed",
    }
)
SMTP_CLASSES = frozenset({"2xx", "4xx", "5xx", "timeout", "connection"})
RETRY_CAUSES = frozenset({"smtp", "database"})
# Who judged the relay's state: the last send attempt, or a relay breaker.
RELAY_SOURCES = frozenset({"attempts", "breaker"})
# What held a mail back: the relay refused a connection or a mail as too
# many/too fast, another throttle reply, or our own budget had no turn free.
THROTTLE_KINDS = frozenset({"connections", "rate", "reply", "budget"})
OTHER = "other"
# Suppression (mailer/suppression.py): what a bounce was, and who reported it.
BOUNCE_REASONS = frozenset({"hard_bounce", "complaint"})
BOUNCE_SOURCES = frozenset({"smtp", "esp_api", "webhook", "admin"})

# Seconds: one SMTP exchange is milliseconds against a healthy relay and
# EMAIL_TIMEOUT (10 s) at worst; a mail's latency spans retries (minutes).
ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

DELIVERIES = Counter(
    "mailer_deliveries",
    "Send attempts of outbox rows by mail kind and outcome.",
    ["kind", "outcome"],
)
SMTP_REPLIES = Counter(
    "mailer_smtp_replies",
    "Answers from the SMTP relay by class; timeout and connection mean none came.",
    ["class"],
)
ATTEMPT_DURATION = Histogram(
    "mailer_attempt_duration_seconds",
    "Time one send attempt spent talking to the relay, by outcome.",
    ["outcome"],
    buckets=ATTEMPT_BUCKETS,
)
DELIVERY_LATENCY = Histogram(
    "mailer_delivery_latency_seconds",
    "From the outbox row's commit to the relay's 250, by mail kind.",
    ["kind"],
    buckets=LATENCY_BUCKETS,
)
RETRIES = Counter(
    "mailer_retries",
    "Send tasks scheduled again, by cause (a transient SMTP failure or the database).",
    ["cause"],
)
SWEEPER_RECLAIMED = Counter(
    "mailer_sweeper_reclaimed",
    "Sending rows whose attempt died, put back to pending by the sweeper.",
)
SWEEPER_REDISPATCHED = Counter(
    "mailer_sweeper_redispatched",
    "Rows past their lease that the sweeper published again.",
)
SWEEPER_NOT_PUBLISHED = Counter(
    "mailer_sweeper_not_published",
    "Rows the sweeper could not publish (broker down); due again next sweep.",
)
SWEEPS = Counter("mailer_sweeps", "Sweeps of stale outbox rows that ran.")
RELAY_UP = Gauge(
    "mailer_relay_up",
    "1 while this worker reaches the SMTP relay, 0 while it does not, by who "
    "judged it; absent until a process has tried.",
    ["source"],
    multiprocess_mode="livemin",
)
BOUNCES = Counter(
    "mailer_bounces",
    "Hard bounces and complaints seen, by reason and source (smtp, esp_api, "
    "webhook), whether or not the address was already suppressed.",
    ["reason", "source"],
)

RELAY_THROTTLES = Counter(
    "mailer_relay_throttles",
    "Mails sent back to the queue for the relay's pace, by kind: the relay "
    "refused a connection (connections) or a mail as too fast (rate), another "
    "throttle reply (reply), or the shared budget had no turn free (budget).",
    ["kind"],
)
RELAY_ALLOWED_CONNECTIONS = Gauge(
    "mailer_relay_allowed_connections",
    "SMTP connections the shared budget allows now, across every worker "
    "(MAILER_RELAY_MAX_CONNECTIONS or less, as learned from the relay).",
    multiprocess_mode="livemostrecent",
)
RELAY_ALLOWED_RATE = Gauge(
    "mailer_relay_allowed_rate",
    "Mails per second the shared budget allows now (MAILER_RELAY_RATE or a "
    "learned rate); 0 when no rate is in force.",
    multiprocess_mode="livemostrecent",
)
RELAY_OPEN_CONNECTIONS = Gauge(
    "mailer_relay_open_connections",
    "SMTP connections to the relay open now, across every worker (the budget's count).",
    multiprocess_mode="livemostrecent",
)
RELAY_WAITING = Gauge(
    "mailer_relay_waiting",
    "Mails waiting in line for a turn under the relay's rate, across every worker.",
    multiprocess_mode="livemostrecent",
)


def record_attempt(
    *,
    kind: str,
    outcome: str,
    smtp_class: str | None = None,
    duration: float | None = None,
    latency: float | None = None,
) -> None:
    """Count one send attempt; call once per attempt, whatever its end.

    `smtp_class` is the relay's answer (`smtp_class_of`), None when no SMTP
    exchange happened (skipped, deferred); `duration` the attempt's seconds
    at the relay; `latency` the seconds from commit to 250, for sent mails.
    """
    outcome = _bounded(outcome, OUTCOMES)
    DELIVERIES.labels(kind=_bounded(kind, KINDS), outcome=outcome).inc()
    if smtp_class is not None:
        smtp_class = _bounded(smtp_class, SMTP_CLASSES)
        SMTP_REPLIES.labels(smtp_class).inc()
        up = smtp_class not in {"timeout", "connection"}
        record_relay_state(up=up, source="attempts")
    if duration is not None:
        ATTEMPT_DURATION.labels(outcome=outcome).observe(duration)
    if latency is not None:
        DELIVERY_LATENCY.labels(kind=_bounded(kind, KINDS)).observe(latency)
    if outcome == "retry":
        RETRIES.labels(cause="smtp").inc()


def record_database_retry() -> None:
    """Count a send task rescheduled because the database failed its claim."""
    RETRIES.labels(cause="database").inc()


def record_bounce(*, reason: str, source: str) -> None:
    """Count a hard bounce or complaint (mailer.suppression.suppress)."""
    BOUNCES.labels(
        reason=_bounded(reason, BOUNCE_REASONS), source=_bounded(source, BOUNCE_SOURCES)
    ).inc()


def record_sweep(*, reclaimed: int, redispatched: int, not_published: int) -> None:
    """Count what one sweep did."""
    SWEEPS.inc()
    SWEEPER_RECLAIMED.inc(reclaimed)
    SWEEPER_REDISPATCHED.inc(redispatched)
    SWEEPER_NOT_PUBLISHED.inc(not_published)


def record_relay_state(*, up: bool, source: str = "breaker") -> None:
    """Set `mailer_relay_up` for this process: the relay-state hook.

    `record_attempt` calls it with what each attempt saw (source
    "attempts"). A relay breaker calls it on each of its transitions with
    the default source; the label keeps the two apart. Labelled, the gauge
    is absent until set, so a process that never sent reports nothing
    rather than "down".
    """
    RELAY_UP.labels(source=_bounded(source, RELAY_SOURCES)).set(1 if up else 0)


def record_throttle(*, kind: str) -> None:
    """Count one mail held back for the relay's pace (THROTTLE_KINDS)."""
    RELAY_THROTTLES.labels(kind=_bounded(kind, THROTTLE_KINDS)).inc()


def record_budget(
    *,
    concurrency: int,
    rate: float | None,
    open_connections: int | None = None,
    waiting: int | None = None,
) -> None:
    """Set the budget gauges: limits, connections open, mails in line for a turn."""
    RELAY_ALLOWED_CONNECTIONS.set(concurrency)
    RELAY_ALLOWED_RATE.set(rate or 0)
    if open_connections is not None:
        RELAY_OPEN_CONNECTIONS.set(open_connections)
    if waiting is not None:
        RELAY_WAITING.set(waiting)


def smtp_class_of(error: BaseException | None, code: int | None = None) -> str:
    """Class of the relay's answer: 2xx, 4xx, 5xx, timeout or connection.

    None as the error means the relay accepted the mail. A reply code wins
    over the exception's type; with no code, a timeout is told from a
    refused, reset or dropped connection.
    """
    if error is None:
        return "2xx"
    if code is not None and 200 <= code < 600:
        return f"{code // 100}xx"
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, smtplib.SMTPResponseException) and error.smtp_code >= 200:
        return f"{error.smtp_code // 100}xx"
    return "connection"


def seconds_since_commit(delivery) -> float | None:
    """Seconds from the row's creation (its transaction's commit) to now.

    Uses `created_at` when the claim loaded it, else reads it by primary
    key; None when that read fails, so a metric never fails a send.
    """
    created_at: datetime | None = delivery.__dict__.get("created_at")
    if created_at is None:
        try:
            created_at = (
                type(delivery)
                .objects.filter(pk=delivery.pk)
                .values_list("created_at", flat=True)
                .first()
            )
        except DatabaseError:
            logger.warning("No latency for delivery %s: database error", delivery.pk)
            return None
    if created_at is None:
        return None
    return max(0.0, (timezone.now() - created_at).total_seconds())


@worker_shutdown.connect
@worker_process_shutdown.connect
def drop_live_gauges(**kwargs) -> None:
    """Forget this process's relay state as it exits (multiprocess mode).

    Counters stay: a dead process's counts are still part of the totals.
    """
    mark_this_process_dead()


def _bounded(value: str, allowed: frozenset[str]) -> str:
    return value if value in allowed else OTHER
