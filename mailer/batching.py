"""Batched sends: the worker's bookkeeping of mails that are ready together, shared.

Off unless MAILER_BATCH_SIZE is above 1 (project/settings.py then sets the
send tasks' `Strategy` here through `CELERY_TASK_ANNOTATIONS`). Every mail
stays its own Celery message with its own task id, its own events
(task-received, task-started, task-succeeded, task-retried, task-failed) and
its own stored result; what mails ready together share is:

- the claim: one UPDATE ... RETURNING for the batch's rows;
- the SMTP session: one pooled connection, each mail within the budget's rate;
- the mark: one UPDATE for the mails the relay accepted, at least every
  MARK_EVERY seconds (each mail on its own on a relay slower than that);
- the result write: one upsert (mailer.results `collected`);
- the event publish: the consumer's dispatcher buffers task events and
  flushes them as one list;
- the acks, each sent after the mark.

Messages go through Celery's default strategy (decoding, task-received,
revocation, ETA, `task_reserved`), which hands each request here instead of
to the pool. A request is flushed at once when no batch runs, so a mail
arriving alone is sent alone, with no wait; while batches run, the next
one starts on a free thread once it holds MAILER_BATCH_SIZE requests or
its oldest has waited MAILER_BATCH_LINGER_MS. Batches run on the threads pool
only; any other pool runs the per-mail path.

A throttle reply or the relay going down stops a batch: its rows after that
mail are not tried; they go back to wait (throttled) or are parked until the
relay answers, with no retry spent, as the per-mail path would leave them.

Anything but a plain outcome (sent, skipped, suppressed) takes the per-mail
path for that request: Celery's own trace runs the task with the outcome
this batch found (`outcome_for`), so retries, failures and their events,
results and acks are exactly the per-mail ones. So does a batch the relay
or the budget turns away before any row is claimed, and a request left
over when the batch itself failed.
"""

import logging
import os
import threading
import time

from celery import states
from celery.app.task import Context
from celery.app.trace import trace_task_ret
from celery.worker import strategy as celery_strategy
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import DatabaseError, close_old_connections, connection, connections
from django.db.models import Case, F, Value, When
from django.db.models.functions import Now
from django.db.models.sql import UpdateQuery
from django.utils import timezone

from mailer import attempts, budget, claims, esp, metrics, relay, suppression
from mailer.leases import lease
from mailer.models import Delivery, TaskResultRecord
from mailer.pool import NoBudget, pool
from mailer.smtp import ClaimLost

logger = logging.getLogger(__name__)

# Outcomes a batch settles itself: a success whose return value is the name.
PLAIN = (attempts.Sent, attempts.Skipped, attempts.Suppressed)
# Seconds a sent row may wait for its mark: a worker killed mid-batch leaves
# the mails the relay accepted in the last MARK_EVERY to be sent again (the
# per-mail path leaves one per thread). On a relay slower than this, each
# mail is marked right after its 250, as on the per-mail path.
MARK_EVERY = 0.1
# Outcomes found by a batch for a task id, for the per-mail trace to take.
_found: dict[str, attempts.Outcome] = {}
_found_lock = threading.Lock()


def batch_size() -> int:
    """Mails per batch; 0 or 1 keeps the per-mail path."""
    return settings.MAILER_BATCH_SIZE


def batch_linger() -> float:
    """Seconds a request may wait for a fuller batch while another batch runs."""
    return settings.MAILER_BATCH_LINGER_MS / 1000


def strategy(task, app, consumer, **kwargs):
    """The send tasks' Strategy: Celery's default, handing requests to a Batcher."""
    thread_pool = type(consumer.pool).__module__ == "celery.concurrency.thread"
    if batch_size() <= 1 or not thread_pool:
        return celery_strategy.default(task, app, consumer, **kwargs)
    batcher = Batcher(
        app, consumer, size=batch_size(), linger=batch_linger(), send=send_batch
    )
    return celery_strategy.default(task, app, _Handing(consumer, batcher), **kwargs)


def outcome_for(task_id: str) -> attempts.Outcome | None:
    """The outcome a batch found for this task id, taken once; None if none."""
    with _found_lock:
        return _found.pop(task_id, None)


class _Handing:
    """The consumer as the default strategy sees it: requests go to the Batcher."""

    def __init__(self, consumer, batcher: "Batcher") -> None:
        self._consumer = consumer
        self.on_task_request = batcher.add

    def __getattr__(self, name):
        return getattr(self._consumer, name)


class Batcher:
    """The requests of one worker's send tasks, grouped while its threads are busy.

    A batch starts at once when none runs (a mail arriving alone waits for
    nothing); while one runs, the next starts on a free thread once it is
    full or its oldest request has waited `linger` seconds. Runs on the
    consumer's event loop, except `_run`, on a pool thread.
    """

    def __init__(self, app, consumer, *, size: int, linger: float, send) -> None:
        self.app = app
        self.consumer = consumer
        self.send = send
        self.size = size
        self.linger = linger
        self.limit = consumer.pool.limit or 1
        self.waiting: list[tuple[float, object]] = []
        self.running = 0
        self.timer = None

    def add(self, request) -> None:
        self.waiting.append((time.monotonic(), request))
        self._pump()

    def _pump(self) -> None:
        while self.waiting and self.running < self.limit and self._due():
            batch, self.waiting = self.waiting[: self.size], self.waiting[self.size :]
            self.running += 1
            requests = [request for _, request in batch]
            self.consumer.pool.apply_async(self._run, args=(requests,))
        if self.waiting and self.timer is None and self.running < self.limit:
            wait = self.waiting[0][0] + self.linger - time.monotonic()
            self.timer = self.consumer.timer.call_after(max(0.0, wait), self._wake)

    def _due(self) -> bool:
        oldest = self.waiting[0][0]
        return (
            self.running == 0
            or len(self.waiting) >= self.size
            or time.monotonic() - oldest >= self.linger
        )

    def _wake(self) -> None:
        self.timer = None
        self._pump()

    def _done(self) -> None:
        self.running -= 1
        self._pump()

    def _run(self, requests: list) -> None:
        close_old_connections()  # as mailer.connections does around each task
        try:
            accepted = time.monotonic()
            for request in requests:
                request.on_accepted(os.getpid(), accepted)
            logger.info("batch of %d send tasks", len(requests))
            self.send(self.app, requests)
        except BaseException:  # noqa: BLE001 - a pool thread must not die silently
            logger.exception("batch of %d send tasks failed", len(requests))
            connections.close_all()
        else:
            close_old_connections()
        finally:
            self.consumer.call_soon(self._done)


def send_batch(app, requests: list) -> None:
    """Send the mails of `requests`; settle each request exactly once."""
    settled: set[str] = set()
    try:
        by_task = _first_per_row(requests)
        plain = _send_plainly(by_task) if by_task else {}
        _settle_plain(app, requests, plain, settled)
    finally:
        for request in requests:
            if request.id not in settled:
                settled.add(request.id)
                _run_per_mail(app, request)


def _first_per_row(requests: list) -> dict[str, int]:
    """Task id to row for the first request of each row: copies take the trace."""
    by_task, rows = {}, set()
    for request in requests:
        delivery_id = int(request.args[0])
        if delivery_id not in rows:
            rows.add(delivery_id)
            by_task[request.id] = delivery_id
    return by_task


def _send_plainly(by_task: dict[str, int]) -> dict[str, attempts.Outcome]:
    """Claim, send and mark what the budget allows; task id to outcome.

    Requests with no outcome here (no rate turn, the relay down, no
    connection) are left to the per-mail path unclaimed; an outcome that is
    not plain is handed to it through `outcome_for`.
    """
    try:
        if relay.relay_is_down():
            return {}
    except DatabaseError:
        return {}
    turns = _reserve_turns(by_task)
    if not turns:
        return {}
    connecting = time.monotonic()
    try:
        smtp = pool.checkout(wait=attempts.BUDGET_WAIT)
    except NoBudget:  # judged by the per-mail path, one by one
        return {}
    except OSError as error:  # refused, timed out, 421 at the greeting
        return _unreachable(by_task, error, connecting)
    try:
        try:
            deliveries = claim_deliveries({t: by_task[t] for t in turns})
        except DatabaseError:
            return {}
        outcomes = {t: attempts.Skipped() for t in turns if t not in deliveries}
        held = _withheld(deliveries)
        outcomes.update(held)
        sending = [(t, d) for t, d in deliveries.items() if t not in held]
        started: dict[str, float] = {}
        unmarked: dict[str, Delivery] = {}
        smtp = _send_each(sending, turns, smtp, outcomes, started, unmarked)
    finally:
        if smtp is not None:
            pool.checkin(smtp)
    # Mails accepted before the relay went down mid-batch do not say it is back.
    down = any(isinstance(o, attempts.Parked) for o in outcomes.values())
    _mark_sent_ones(unmarked, outcomes, started, relay_answered=not down)
    return outcomes


def _unreachable(by_task: dict[str, int], error: OSError, started: float) -> dict:
    """No connection to the relay: the batch's first mail is judged as it would be
    alone (`attempts._refused_at_connect`: throttled and held unclaimed, or
    claimed and parked with the relay marked down); the rest take the
    per-mail path, which then finds the relay down and parks them unclaimed,
    instead of each waiting out the same connect. (A database error's retry
    countdown is then the first one's: the batch does not know the task's
    retries; Celery still counts them.)
    """
    task_id, delivery_id = next(iter(by_task.items()))
    outcome = attempts._refused_at_connect(delivery_id, task_id, 0, error, started)
    return {task_id: outcome}


def _reserve_turns(by_task: dict[str, int]) -> dict[str, float]:
    """Task id to the monotonic time of its rate turn, while turns come in time."""
    turns = {}
    for task_id in by_task:
        asked = time.monotonic()
        turn = budget.reserve_send(max_wait=attempts.BUDGET_WAIT)
        if not turn.reserved:
            break
        turns[task_id] = asked + turn.wait
    return turns


def _withheld(deliveries: dict[str, Delivery]) -> dict[str, attempts.Outcome]:
    """Suppressed addresses among the claimed rows: one query, then per row."""
    keys = {
        suppression.normalize_address(d.user.email).lower(): t
        for t, d in deliveries.items()
    }
    listed = {
        address.lower()
        for address in suppression.suppressed_addresses()
        .filter(key__in=list(keys))
        .values_list("address", flat=True)
    }
    held = {}
    for key in listed:
        task_id = keys[key]
        delivery = deliveries[task_id]
        if suppression.withhold(delivery):
            held[task_id] = attempts._counted(attempts.Suppressed(delivery.kind))
    return held


def _send_each(sending, turns, smtp, outcomes, started, unmarked):
    """Send each claimed row on `smtp` at its turn; return the connection held.

    `outcomes` and `started` (when DATA began) are filled in by task id;
    `unmarked` holds the sent rows not marked yet. Sent rows are marked
    once the oldest of them went out MARK_EVERY ago, so a worker killed
    mid-batch leaves no more to be sent again than that. A throttle reply or
    the relay going down stops the batch: the rows after it go back to
    wait, as the per-mail path would send them, with no retry spent.
    """
    stopped_by = None
    for task_id, delivery in sending:
        if stopped_by is not None:
            outcomes[task_id] = _set_aside(delivery, task_id, stopped_by)
            continue
        if smtp is None:
            outcomes[task_id] = _no_connection(delivery, task_id)
            continue
        time.sleep(max(0.0, turns[task_id] - time.monotonic()))
        started[task_id] = time.monotonic()
        try:
            claims.send_delivery(delivery, smtp=smtp)
        except ClaimLost:
            logger.warning("delivery %s: claim lost before DATA, not sent", delivery.pk)
            outcomes[task_id] = attempts._counted(attempts.Skipped(delivery.kind))
        except esp.SEND_ERRORS as error:
            others = attempts._others_open(mine=smtp.holder is not None)
            outcome = attempts._after_failure(
                delivery, task_id, error, others_open=others
            )
            outcomes[task_id] = attempts._counted(
                outcome, error=error, started=started[task_id]
            )
            if isinstance(outcome, (attempts.Throttled, attempts.Parked)):
                stopped_by = outcome
        else:
            outcomes[task_id] = attempts.Sent(delivery.kind)
            unmarked[task_id] = delivery
        if unmarked and time.monotonic() - started[next(iter(unmarked))] >= MARK_EVERY:
            _mark_sent_ones(unmarked, outcomes, started)
        if smtp.broken:
            pool.checkin(smtp)
            smtp = _reconnect() if stopped_by is None else None
    return smtp


def _set_aside(delivery: Delivery, task_id: str, cause) -> attempts.Outcome:
    """A claimed row after a throttle or an outage in its batch: not sent.

    Throttled: back to pending for a countdown of its own, as the budget
    sends it back. Parked: set aside with the relay's reason until it
    answers again. No retry spent either way; the limit was learned (or
    the relay marked down) once, from the reply that stopped the batch.
    """
    if isinstance(cause, attempts.Parked):
        return attempts._counted(
            attempts._park(
                delivery.pk, task_id, cause.code, cause.reason, delivery.kind
            )
        )
    outcome = attempts.Throttled(
        attempts.throttle_countdown(attempts.THROTTLE_COUNTDOWN_MIN),
        code=cause.code,
        reason=cause.reason,
        kind=delivery.kind,
    )
    return _requeued(delivery, task_id, outcome)


def _requeued(
    delivery: Delivery, task_id: str, outcome: attempts.Throttled
) -> attempts.Outcome:
    """A claimed row back to pending for `outcome`'s countdown, no retry spent."""
    requeued = claims.requeue_throttled(
        delivery_id=delivery.pk,
        task_id=task_id,
        countdown=outcome.countdown,
        code=outcome.code,
        reason=outcome.reason,
    )
    return attempts._counted(outcome if requeued else attempts.Skipped(delivery.kind))


def _reconnect():
    try:
        return pool.checkout(wait=attempts.BUDGET_WAIT)
    except (NoBudget, OSError):
        return None


def _no_connection(delivery: Delivery, task_id: str) -> attempts.Outcome:
    """A claimed row left without a connection: back to pending, no retry spent."""
    outcome = attempts.Throttled(
        attempts.throttle_countdown(attempts.BUDGET_WAIT),
        reason="relay budget: connections",
        kind=delivery.kind,
    )
    return _requeued(delivery, task_id, outcome)


def _mark_sent_ones(
    unmarked: dict, outcomes: dict, started: dict, *, relay_answered: bool = True
) -> None:
    """Mark the sent rows of `unmarked` in one statement, and empty it."""
    if not unmarked:
        return
    sent = dict(unmarked)
    unmarked.clear()
    marked = _record_sent({t: d.pk for t, d in sent.items()})
    for task_id, delivery in sent.items():
        if delivery.pk not in marked:
            logger.warning(
                "delivery %s: sent, but its claim had passed to another "
                "attempt (a possible duplicate)",
                delivery.pk,
            )
        attempts._note_accepted()
        attempts._counted(
            outcomes[task_id],
            started=started[task_id],
            latency=metrics.seconds_since_commit(delivery),
        )
    if relay_answered:
        relay.note_delivered()


def _record_sent(by_task: dict[str, int]) -> set[int]:
    """Mark accepted mails sent in one statement, riding out a short outage."""
    deadline = time.monotonic() + settings.MAILER_STALE_AFTER / 2
    while True:
        try:
            return mark_deliveries_sent(by_task)
        except DatabaseError:
            if time.monotonic() > deadline:
                raise
            logger.warning(
                "Recording %d deliveries as sent failed; retrying", len(by_task)
            )
            if not connection.in_atomic_block:
                connection.close_if_unusable_or_obsolete()
            time.sleep(0.5)


def _settle_plain(app, requests, outcomes, settled: set[str]) -> None:
    """Store, log, ack and announce the plain outcomes; hand on the others."""
    plain = {t: o for t, o in outcomes.items() if isinstance(o, PLAIN)}
    with _found_lock:
        _found.update({t: o for t, o in outcomes.items() if not isinstance(o, PLAIN)})
    done = [r for r in requests if r.id in plain]
    from mailer.tasks import _log

    def log(request, runtime: float) -> None:
        _log(_context(request), int(request.args[0]), plain[request.id], runtime)

    settle(app, done, {t: o.name for t, o in plain.items()}, settled, log=log)


def settle(app, done: list, results: dict[str, str], settled: set[str], log=None):
    """Succeed the requests of `done`: their SUCCESS results (by task id in
    `results`) in one upsert, then each one logged, acked and announced, and
    added to `settled`."""
    if not done:
        return
    backend = app.backend
    with TaskResultRecord.objects.collected():
        for request in done:
            if not request.task.ignore_result:
                backend.store_result(
                    request.id,
                    results[request.id],
                    states.SUCCESS,
                    request=_context(request),
                )
    now = time.time()
    for request in done:
        settled.add(request.id)
        runtime = now - (request.time_start or now)
        if log is not None:
            log(request, runtime)
        request.on_success((False, results[request.id], runtime))


def _context(request) -> Context:
    """The task request as the result backend and the log read it."""
    return Context(request.request_dict, args=request.args, kwargs=request.kwargs)


def _run_per_mail(app, request) -> None:
    """Run one request through Celery's own trace, as the threads pool would."""
    result = trace_task_ret(
        request.type,
        request.id,
        request.request_dict,
        request.body,
        request.content_type,
        request.content_encoding,
        app=app,
        hostname=request.hostname,
    )
    request.on_success(result)


def claim_deliveries(by_task: dict[str, int]) -> dict[str, Delivery]:
    """Claim pending rows for their tasks in one UPDATE ... RETURNING.

    The same conditional move as `claims.claim_delivery` (pending to
    sending, this attempt's task id, a MAILER_LEASE lease on the database's
    clock), for many rows; their users come in one more query.
    """
    if not by_task:
        return {}
    asked_at, now = time.monotonic(), timezone.now()
    task_of = Case(*(When(pk=pk, then=Value(t)) for t, pk in by_task.items()))
    rows = Delivery.objects.filter(
        pk__in=list(by_task.values()), status=Delivery.Status.PENDING
    )
    names = ["id", "user_id", "kind", "language", "attempts", "retries"]
    names += ["created_at", "message_id", "despite_suppression"]
    returned = _update_returning(
        rows,
        {
            "status": Delivery.Status.SENDING,
            "waiting_for_relay": False,
            "task_id": task_of,
            "attempts": F("attempts") + 1,
            "lease_expires_at": Now() + lease(),
            "updated_at": now,
        },
        names,
    )
    if not returned:
        return {}
    users = get_user_model().objects.in_bulk([row["user_id"] for row in returned])
    task_for = {pk: t for t, pk in by_task.items()}
    fields = [f.attname for f in Delivery._meta.concrete_fields]
    claimed = {}
    for row in returned:
        loaded = {
            **row,
            "status": Delivery.Status.SENDING,
            "task_id": task_for[row["id"]],
        }
        kept = [name for name in fields if name in loaded]
        delivery = Delivery.from_db(connection.alias, kept, [loaded[n] for n in kept])
        delivery.user = users[row["user_id"]]
        delivery.held_until = (
            asked_at + settings.MAILER_LEASE * claims.LOCAL_FENCE_SHARE
        )
        claimed[delivery.task_id] = delivery
    return claimed


def mark_deliveries_sent(by_task: dict[str, int]) -> set[int]:
    """Mark rows sent in one UPDATE, each only while its task holds it; their ids."""
    task_of = Case(*(When(pk=pk, then=Value(t)) for t, pk in by_task.items()))
    rows = Delivery.objects.filter(
        pk__in=list(by_task.values()),
        status=Delivery.Status.SENDING,
        task_id=task_of,
    )
    now = timezone.now()
    returned = _update_returning(
        rows,
        {
            "status": Delivery.Status.SENT,
            "sent_at": now,
            "smtp_code": 250,
            "last_error": "",
            "updated_at": now,
        },
        ["id"],
    )
    return {row["id"] for row in returned}


def _update_returning(queryset, values: dict, names: list[str]) -> list[dict]:
    """The ORM's UPDATE for `queryset` with RETURNING `names`, as dicts.

    Django's `update()` returns a count only. PostgreSQL and SQLite (3.35+)
    both take RETURNING on a plain UPDATE; the values are converted by the
    fields as a SELECT would.
    """
    query = queryset.query.chain(UpdateQuery)
    query.add_update_values(values)
    sql, params = query.get_compiler(queryset.db).as_sql()
    quote = connection.ops.quote_name
    fields = [Delivery._meta.get_field(name) for name in names]
    sql += " RETURNING " + ", ".join(quote(f.column) for f in fields)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        raw = cursor.fetchall()
    columns = [f.get_col(Delivery._meta.db_table) for f in fields]
    converters = [
        connection.ops.get_db_converters(col) + col.get_db_converters(connection)
        for col in columns
    ]
    rows = []
    for values_row in raw:
        row = {}
        for col, convert, value in zip(columns, converters, values_row, strict=True):
            for converter in convert:
                value = converter(value, col, connection)
            row[col.target.attname] = value
        rows.append(row)
    return rows
