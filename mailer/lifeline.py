"""The lifeline: each worker process renews what it holds and rescues the rest.

Every MAILER_HEARTBEAT_INTERVAL seconds a thread in each worker process:

1. renews the leases of the rows whose messages this worker has taken and
   whose attempts it runs (an attempt older than MAILER_SEND_TIME_LIMIT is
   hung: it is left to lapse);
2. rescues: rows of attempts whose lease ran out (a worker killed or frozen)
   go back to pending, and every due pending row is published again (the
   sweep, so recovery does not wait for beat);
3. notices a broker that lost its data (restarted with no persistence, or
   flushed): its epoch key changed or is missing, even at this process's
   first beat; every pending row is made due, so step 2 publishes it again;
4. while the relay is down, probes it when this process's turn comes.

A message the worker receives (prefetched, not yet started) would keep the
MAILER_STALE_AFTER lease its row was written with until the next beat, and
a worker killed in between would leave it for the backstop. So each receipt
wakes the lifeline, which renews what arrived since its last renewal in one
UPDATE: a prefetch burst costs one query, steady receipts at most one every
RECEIPT_GAP seconds.

Leases are on the database's clock, so worker hosts may drift. The claim
keeps a late original and a rescued copy from both sending, and the check
before DATA keeps a worker resumed after a freeze from sending a copy.
"""

import logging
import threading
import time
import uuid
from datetime import datetime
from typing import NamedTuple

from celery.signals import task_received, worker_ready, worker_shutdown
from celery.worker import state as worker_state
from django.conf import settings
from django.db import DatabaseError, connections
from django.utils import timezone
from kombu.exceptions import KombuError
from redis import RedisError

from mailer import leases, relay, sweeper
from mailer.dispatch import ACCOUNT_MAIL_TASK, WELCOME_TASK

logger = logging.getLogger(__name__)

LEASED_TASKS = frozenset({WELCOME_TASK, ACCOUNT_MAIL_TASK})
# Set when first seen missing; its loss means the broker's data went with it.
EPOCH_KEY = "mailer:broker-epoch"
BROKER_TIMEOUT = 1.0  # seconds; a frozen broker must not stall the renewals
BACK_GUARD = 5  # seconds: other workers seeing the same outage's end do nothing
RECEIPT_GATHER = 0.05  # seconds: the rest of a prefetch burst arrives meanwhile
RECEIPT_GAP = 0.5  # seconds: the least time between two renewals of receipts
# An outage of the database or the broker: logged in one line, tried next beat.
OUTAGES = (DatabaseError, OSError, KombuError, RedisError)


class Held(NamedTuple):
    """The send tasks this process holds, by what their rows should be."""

    waiting: list[int]  # rows of messages received and not started: pending
    running: dict[str, int]  # task id to row of the attempts running: sending


def held_deliveries(*, now: float) -> Held:
    """The rows of the send tasks this process holds, waiting or running."""
    for _ in range(3):  # the sets change under other threads
        try:
            active = set(worker_state.active_requests)
            requests = [*worker_state.reserved_requests, *active]
            break
        except RuntimeError:
            continue
    else:
        return Held([], {})
    held = Held([], {})
    for request in requests:
        if request.task_name not in LEASED_TASKS or not request.args:
            continue
        delivery_id = int(request.args[0])
        if request not in active:
            held.waiting.append(delivery_id)
            continue
        started = request.time_start
        if started and now - started > settings.MAILER_SEND_TIME_LIMIT:
            continue
        held.running[request.id] = delivery_id
    return held


class Lifeline(threading.Thread):
    """The heartbeat thread of one worker process."""

    def __init__(self, app) -> None:
        super().__init__(name="mailer-lifeline", daemon=True)
        self.app = app
        self.stopping = threading.Event()
        self.wake = threading.Event()  # a receipt to renew, or stopping
        self.receipts_lock = threading.Lock()
        self.receipts: set[int] = set()
        self.epoch: bytes | None = None
        self.broker_down_since: datetime | None = None  # when a beat first failed
        self.prober: threading.Thread | None = None

    def run(self) -> None:
        self.beat()  # at once: the broker's epoch is known before any fault
        interval = settings.MAILER_HEARTBEAT_INTERVAL
        next_beat = time.monotonic() + interval
        renewed_at = -RECEIPT_GAP
        while True:
            self.wake.wait(max(0.0, next_beat - time.monotonic()))
            if self.stopping.is_set():
                break
            if self.wake.is_set():
                gap = renewed_at + RECEIPT_GAP - time.monotonic()
                self.stopping.wait(max(RECEIPT_GATHER, gap))
                self.wake.clear()
                self.renew_receipts()
                renewed_at = time.monotonic()
            if time.monotonic() >= next_beat:
                self.beat()
                next_beat = time.monotonic() + interval
        connections.close_all()

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        self.wake.set()
        self.join(timeout)

    def note_receipt(self, delivery_id: int) -> None:
        """Renew this row's lease soon: its message is in this worker's hands."""
        with self.receipts_lock:
            self.receipts.add(delivery_id)
        self.wake.set()

    def renew_receipts(self) -> None:
        """Renew the rows of the messages received since the last time, at once.

        On failure the next beat renews them with the rest of what is held.
        """
        with self.receipts_lock:
            received, self.receipts = self.receipts, set()
        # Only what still waits: an attempt that already ran set its own lease.
        waiting = set(held_deliveries(now=time.time()).waiting) & received
        try:
            leases.renew_leases(waiting_ids=list(waiting), running={})
        except OUTAGES as error:
            logger.warning("lifeline: renew_receipts failed: %r", error)
            connections.close_all()

    def beat(self) -> None:
        """One heartbeat; a step that fails is logged and tried next time."""
        for step in (self.renew, self.rescue, self.watch_broker, self.watch_relay):
            try:
                step()
            except OUTAGES as error:
                logger.warning("lifeline: %s failed: %r", step.__name__, error)
                connections.close_all()
            except Exception:  # noqa: BLE001 - the next beat tries again
                logger.exception("lifeline: %s failed", step.__name__)
                connections.close_all()

    def renew(self) -> None:
        held = held_deliveries(now=time.time())
        leases.renew_leases(waiting_ids=held.waiting, running=held.running)

    def rescue(self) -> None:
        report = sweeper.sweep_stale_deliveries()
        if report.reclaimed or report.redispatched:
            logger.warning(
                "lifeline rescued mails: reclaimed=%d (attempts of a dead or frozen "
                "worker) redispatched=%d deliveries=%s",
                report.reclaimed,
                len(report.redispatched),
                ",".join(map(str, report.redispatched)),
            )

    def watch_broker(self) -> None:
        try:
            epoch, lost = self._read_epoch()
        except Exception:
            self.broker_down_since = self.broker_down_since or timezone.now()
            raise
        self.epoch = epoch
        if lost:
            due = leases.make_pending_due()
            logger.warning(
                "broker lost its data (restarted without persistence?) or is "
                "new: %d pending mails made due for re-dispatch",
                due,
            )
        elif self.broker_down_since and self._first_back(epoch):
            due = leases.make_queued_due(published_before=self.broker_down_since)
            logger.warning(
                "broker back after an outage: %d queued mails made due for "
                "re-dispatch (a message popped as the broker went down is lost)",
                due,
            )
        self.broker_down_since = None

    def _first_back(self, epoch: bytes) -> bool:
        """Whether this process is the first to see the broker back (one per outage)."""
        connection = self.app.connection_for_write(connect_timeout=BROKER_TIMEOUT)
        try:
            client = connection.default_channel.client
            return bool(client.set(f"{EPOCH_KEY}:back", epoch, nx=True, ex=BACK_GUARD))
        finally:
            connection.release()

    def _read_epoch(self) -> tuple[bytes, bool]:
        """The broker's epoch, and whether the broker lost it since the last beat."""
        connection = self.app.connection_for_write(
            connect_timeout=BROKER_TIMEOUT,
            transport_options={
                "socket_timeout": BROKER_TIMEOUT,
                "socket_connect_timeout": BROKER_TIMEOUT,
            },
        )
        created = False
        try:
            client = connection.default_channel.client
            epoch = client.get(EPOCH_KEY)
            if epoch is None:
                created = bool(client.set(EPOCH_KEY, uuid.uuid4().hex, nx=True))
                epoch = client.get(EPOCH_KEY)
        finally:
            connection.release()
        # Finding no epoch is a loss too: the lifelines that knew the old one
        # may all be gone (a worker frozen through the restart and then dead,
        # a deploy), and a process's first beat has nothing to compare. On a
        # new Redis the pending rows' messages are published once more, and
        # the claim turns every copy into a skip.
        return epoch, created or (self.epoch is not None and epoch != self.epoch)

    def watch_relay(self) -> None:
        state = relay.refresh()
        if state is None:
            relay.forget_outages()
            stray = leases.release_parked()  # parked by a send racing the release
            if stray:
                logger.warning(
                    "lifeline released %d mails parked after the relay came back", stray
                )
            return
        probing = self.prober is not None and self.prober.is_alive()
        if not probing and relay.take_probe(state):
            self.prober = threading.Thread(
                target=_probe, name="mailer-relay-probe", daemon=True
            )
            self.prober.start()


def _probe() -> None:
    try:
        relay.probe()
    except Exception:  # noqa: BLE001 - the next probe tries again
        logger.exception("relay probe failed")
    finally:
        connections.close_all()


_lifeline: Lifeline | None = None


@worker_ready.connect(dispatch_uid="mailer.lifeline.start")
def start_lifeline(sender, **kwargs) -> None:
    """Start this worker process's lifeline once it consumes.

    MAILER_HEARTBEAT_INTERVAL=0 turns it off: leases then only lapse, and
    rows wait for beat's sweep (a worker that must not touch other rows).
    """
    global _lifeline
    if settings.MAILER_HEARTBEAT_INTERVAL <= 0:
        logger.warning("lifeline off (MAILER_HEARTBEAT_INTERVAL=0): no lease renewal")
        return
    _lifeline = Lifeline(sender.app)
    _lifeline.start()


@task_received.connect(dispatch_uid="mailer.lifeline.receipt")
def renew_on_receipt(sender, request, **kwargs) -> None:
    """Have the lifeline renew a send task's row as soon as its message arrives.

    Runs in the consumer for every message: a set insert, no query. A
    message with a countdown (a retry's backoff, a throttled mail's turn)
    is left alone: its row's lease already runs past the countdown, and a
    lease renewed to MAILER_LEASE now would lapse before the countdown
    ends, and the rescue would send the mail early.
    """
    if _lifeline is None or request.task_name not in LEASED_TASKS or not request.args:
        return
    if request.eta:
        return
    _lifeline.note_receipt(int(request.args[0]))


@worker_shutdown.connect(dispatch_uid="mailer.lifeline.stop")
def stop_lifeline(**kwargs) -> None:
    """Stop renewing: what this worker still holds lapses to the others."""
    if _lifeline is not None:
        _lifeline.stop()
