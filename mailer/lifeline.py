"""The lifeline: each worker process renews what it holds and rescues the rest.

Every MAILER_HEARTBEAT_INTERVAL seconds a thread in each worker process:

1. renews the leases of the rows whose messages this worker has taken and
   whose attempts it runs (an attempt older than MAILER_SEND_TIME_LIMIT is
   hung: it is left to lapse);
2. rescues: rows of attempts whose lease ran out (a worker killed or frozen)
   go back to pending, and every due pending row is published again (the
   sweep, so recovery does not wait for beat);
3. notices a broker that lost its data (restarted with no persistence, or
   flushed): every pending row is made due, so step 2 publishes it again;
4. while the relay is down, probes it when this process's turn comes.

Leases are on the database's clock, so worker hosts may drift. The claim
keeps a late original and a rescued copy from both sending, and the check
before DATA keeps a worker resumed after a freeze from sending a copy.
"""

import logging
import threading
import time
import uuid

from celery.signals import worker_ready, worker_shutdown
from celery.worker import state as worker_state
from django.conf import settings
from django.db import connections

from mailer import leases, relay, sweeper
from mailer.dispatch import ACCOUNT_MAIL_TASK, WELCOME_TASK

logger = logging.getLogger(__name__)

LEASED_TASKS = frozenset({WELCOME_TASK, ACCOUNT_MAIL_TASK})
# Set when first seen missing; its loss means the broker's data went with it.
EPOCH_KEY = "mailer:broker-epoch"
BROKER_TIMEOUT = 1.0  # seconds; a frozen broker must not stall the renewals


def held_deliveries(*, now: float) -> tuple[list[int], list[str]]:
    """Delivery ids and task ids of the send tasks this process holds."""
    for _ in range(3):  # the sets change under other threads
        try:
            requests = [*worker_state.reserved_requests, *worker_state.active_requests]
            break
        except RuntimeError:
            continue
    else:
        return [], []
    ids, task_ids = [], []
    for request in requests:
        if request.task_name not in LEASED_TASKS or not request.args:
            continue
        started = request.time_start
        if started and now - started > settings.MAILER_SEND_TIME_LIMIT:
            continue
        ids.append(int(request.args[0]))
        task_ids.append(request.id)
    return ids, task_ids


class Lifeline(threading.Thread):
    """The heartbeat thread of one worker process."""

    def __init__(self, app) -> None:
        super().__init__(name="mailer-lifeline", daemon=True)
        self.app = app
        self.stopping = threading.Event()
        self.epoch: bytes | None = None
        self.prober: threading.Thread | None = None

    def run(self) -> None:
        self.beat()  # at once: the broker's epoch is known before any fault
        while not self.stopping.wait(settings.MAILER_HEARTBEAT_INTERVAL):
            self.beat()
        connections.close_all()

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        self.join(timeout)

    def beat(self) -> None:
        """One heartbeat; a step that fails is logged and tried next time."""
        for step in (self.renew, self.rescue, self.watch_broker, self.watch_relay):
            try:
                step()
            except Exception:  # noqa: BLE001 - the next beat tries again
                logger.exception("lifeline: %s failed", step.__name__)
                connections.close_all()

    def renew(self) -> None:
        ids, task_ids = held_deliveries(now=time.time())
        leases.renew_leases(delivery_ids=ids, task_ids=task_ids)

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
        epoch, lost = self._read_epoch()
        self.epoch = epoch
        if lost:
            due = leases.make_pending_due()
            logger.warning(
                "broker lost its data (restarted without persistence?): "
                "%d pending mails made due for re-dispatch",
                due,
            )

    def _read_epoch(self) -> tuple[bytes, bool]:
        """The broker's epoch, and whether it changed since the last beat."""
        connection = self.app.connection_for_write(
            connect_timeout=BROKER_TIMEOUT,
            transport_options={
                "socket_timeout": BROKER_TIMEOUT,
                "socket_connect_timeout": BROKER_TIMEOUT,
            },
        )
        try:
            client = connection.default_channel.client
            epoch = client.get(EPOCH_KEY)
            if epoch is None:
                client.set(EPOCH_KEY, uuid.uuid4().hex, nx=True)
                epoch = client.get(EPOCH_KEY)
        finally:
            connection.release()
        return epoch, self.epoch is not None and epoch != self.epoch

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


@worker_shutdown.connect(dispatch_uid="mailer.lifeline.stop")
def stop_lifeline(**kwargs) -> None:
    """Stop renewing: what this worker still holds lapses to the others."""
    if _lifeline is not None:
        _lifeline.stop()
