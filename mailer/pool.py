"""SMTP connections to the relay: one pool per worker process, within the budget.

A thread checks a connection out for one send and back in after it. A new
connection first takes a slot of the shared budget (mailer/budget.py), so
every worker process and thread together never open more than
MAILER_RELAY_MAX_CONNECTIONS, or the concurrency learned from the relay. A
reaper thread renews the slots of open connections every second and says
QUIT to any idle for IDLE_CLOSE_AFTER: an idle pool never holds a relay's
slots while nothing is sent. When another process was refused a slot, it
says QUIT sooner, to any idle for IDLE_YIELD_AFTER: one worker's idle
connections never keep another's threads waiting on a connection cap.
While Redis is away, a process opens connections on its own cap
(MAILER_RELAY_MAX_CONNECTIONS); once it is back, each of them takes a slot
at its next check-in, or closes when none is free. `close_all` ends every
one at shutdown.
"""

import logging
import os
import random
import smtplib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.core.mail import EmailMessage
from django.core.mail.backends import smtp as django_smtp

from mailer import budget, metrics
from mailer.mailers import get_mailer
from mailer.smtp import ClaimLost, _close_quietly, _FencedMixin

logger = logging.getLogger(__name__)

IDLE_CHECK_AFTER = 2.0  # seconds idle before a NOOP checks the line
IDLE_CLOSE_AFTER = 5.0  # seconds idle before the connection is closed
IDLE_YIELD_AFTER = 0.2  # seconds idle before it is closed for a process that waits
REAP_EVERY = 1.0  # seconds between the reaper's rounds
POLL = 0.1  # seconds between tries for a slot while every one is taken
LOCAL = "local"  # a connection on this process's own cap: the budget was away


class NoBudget(Exception):
    """No connection slot or rate token came within the wait: come back later."""

    def __init__(self, limit: str) -> None:
        super().__init__(f"relay budget: no {limit} free")
        self.limit = limit  # "connections" or "rate"


class Connection:
    """One open SMTP backend, the slot it holds, and when it was last used."""

    def __init__(self, backend, holder: str | None) -> None:
        self.backend = backend
        self.holder = holder  # None: no slot (not SMTP, or the budget was away)
        self.last_used = time.monotonic()
        self.broken = False

    def send(
        self, message: EmailMessage, *, fence: Callable[[], bool] | None = None
    ) -> None:
        """Send one message; `fence` is asked right before DATA, if at all.

        A backend that is not SMTP (the test suite's in-memory one) has no
        DATA: the fence is asked before the message is handed to it. Any
        error leaves the connection broken: it is closed at check-in.
        """
        smtp = getattr(self.backend, "connection", None)
        fenced = isinstance(smtp, _FencedMixin)
        try:
            if fenced:
                smtp.fence = fence
            elif fence is not None and not fence():
                raise ClaimLost("claim lost before sending")
            self.backend.send_messages([message])
        except BaseException:
            self.broken = True
            raise
        finally:
            if fenced:
                smtp.fence = None
        self.last_used = time.monotonic()

    def is_alive(self) -> bool:
        """Whether the line still answers, asked with NOOP only after some idling."""
        smtp = getattr(self.backend, "connection", None)
        if smtp is None or time.monotonic() - self.last_used < IDLE_CHECK_AFTER:
            return True
        try:
            return smtp.noop()[0] == 250
        except (OSError, smtplib.SMTPException):
            return False


class Pool:
    """The connections of one worker process."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.idle: list[Connection] = []  # most recently used last
        self.busy: set[Connection] = set()
        self.opening = 0  # connections being opened on this process's own cap
        self.pid = os.getpid()
        self.reaper: threading.Thread | None = None
        self.stopping = threading.Event()

    @contextmanager
    def connection(self, *, wait: float) -> Iterator[Connection]:
        """Check a connection out for one send; closed afterwards if it broke."""
        conn = self.checkout(wait=wait)
        try:
            yield conn
        except BaseException:
            conn.broken = True
            raise
        finally:
            self.checkin(conn)

    def checkout(self, *, wait: float) -> Connection:
        """An open connection: an idle one, or a new one in a free slot.

        Raises `NoBudget` when no slot frees within `wait` seconds, and what
        opening the connection raised (a refused connection, a 421 at the
        greeting) after giving its slot back.
        """
        self._after_fork()
        deadline = time.monotonic() + wait
        while True:
            conn = self._take_idle()
            if conn is not None:
                if conn.is_alive():
                    return self._lent(conn)
                self._close(conn)
                continue
            backend = get_mailer()
            if not isinstance(backend, django_smtp.EmailBackend):
                backend.open()  # not SMTP: nothing to count
                return self._lent(Connection(backend, None))
            holder = self._slot()
            if holder is LOCAL:
                try:
                    return self._lent(self._open(backend, None))
                finally:
                    with self.lock:
                        self.opening -= 1
            if holder is not None:
                conn = self._lent(self._open(backend, holder))
                budget.mark_open(holder=holder)
                return conn
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoBudget("connections")
            with self.lock:
                self.lock.wait(min(remaining, POLL * random.uniform(0.5, 1.5)))

    def checkin(self, conn: Connection) -> None:
        """Take a connection back: pooled while healthy and within the limit.

        A connection opened while the budget was away joins it as soon as it
        is back, or is closed when no slot is free: kept beside the budget,
        a busy connection would never idle out, and the relay's connection
        cap would count it while the budget did not (every send the budget
        allowed then meets a 421 at the greeting).
        """
        if conn.holder is None and not conn.broken and self._outside_budget(conn):
            conn.broken = not self._join_budget(conn)
        with self.lock:
            self.busy.discard(conn)
            keep = not conn.broken and not self.stopping.is_set()
            if keep and conn.holder is not None:
                open_now, allowed = budget.last_seen()
                keep = allowed == 0 or open_now <= allowed
            if keep:
                conn.last_used = time.monotonic()
                self.idle.append(conn)
                self.lock.notify()
                return
        self._close(conn)

    def close_idle(self, *, older_than: float | None = None) -> int:
        """QUIT connections idle that long (IDLE_CLOSE_AFTER); return how many."""
        idle_for = IDLE_CLOSE_AFTER if older_than is None else older_than
        cutoff = time.monotonic() - idle_for
        with self.lock:
            old = [conn for conn in self.idle if conn.last_used <= cutoff]
            self.idle = [conn for conn in self.idle if conn.last_used > cutoff]
        for conn in old:
            self._close(conn)
        return len(old)

    def close_all(self) -> None:
        """Say QUIT on every idle connection; busy ones close at check-in."""
        with self.lock:
            idle, self.idle = self.idle, []
        for conn in idle:
            self._close(conn)

    def stop(self) -> None:
        """Close everything and stop the reaper (worker shutdown)."""
        self.stopping.set()
        self.close_all()

    def open_count(self) -> int:
        with self.lock:
            return len(self.idle) + len(self.busy)

    def reap(self) -> None:
        """One round: close idle connections, renew slots, keep within the limit."""
        self.close_idle()
        with self.lock:
            holders = [c.holder for c in (*self.idle, *self.busy) if c.holder]
        seen = budget.renew_slots(holders=holders)
        if seen is None:
            return
        metrics.record_budget(
            open_connections=seen.open_now,
            concurrency=seen.limits.concurrency,
            rate=seen.limits.rate,
            waiting=seen.waiting,
        )
        if seen.open_now > seen.limits.concurrency:
            self.close_all()  # over a learned limit: idle ones go first
        elif seen.wanted:
            self.close_idle(older_than=IDLE_YIELD_AFTER)

    def _take_idle(self) -> Connection | None:
        with self.lock:
            return self.idle.pop() if self.idle else None

    def _lent(self, conn: Connection) -> Connection:
        with self.lock:
            self.busy.add(conn)
        return conn

    def _outside_budget(self, conn: Connection) -> bool:
        """Whether an SMTP connection was opened on this process's own cap."""
        return isinstance(conn.backend, django_smtp.EmailBackend)

    def _join_budget(self, conn: Connection) -> bool:
        """Give a connection opened on this process's own cap a budget slot.

        True when it may stay open: it took a slot, or the budget is still
        away and this process's own cap holds. False when the budget is back
        with no slot free: the connection must close.
        """
        holder = _holder_name()
        granted = budget.acquire_slot(holder=holder)
        if granted is None:
            return True
        if not granted:
            return False
        conn.holder = holder
        budget.mark_open(holder=holder)
        self._start_reaper()
        return True

    def _slot(self) -> str | None:
        """A budget slot's holder name, LOCAL when the budget is away, None if full."""
        holder = _holder_name()
        granted = budget.acquire_slot(holder=holder)
        if granted:
            self._start_reaper()
            return holder
        if granted is None:  # no shared budget: this process's own cap holds
            with self.lock:
                count = len(self.idle) + len(self.busy) + self.opening
                if count < budget.max_connections():
                    self.opening += 1
                    return LOCAL
        return None

    def _open(self, backend, holder: str | None) -> Connection:
        try:
            backend.open()
        except BaseException:
            _close_quietly(backend)
            if holder is not None:
                budget.release_slot(holder=holder)
            raise
        return Connection(backend, holder)

    def _close(self, conn: Connection) -> None:
        with self.lock:
            self.busy.discard(conn)
            self.lock.notify()
        _close_quietly(conn.backend)
        if conn.holder is not None:
            budget.release_slot(holder=conn.holder)

    def _start_reaper(self) -> None:
        with self.lock:
            if self.reaper is not None and self.reaper.is_alive():
                return
            self.reaper = threading.Thread(
                target=self._reap_forever, name="mailer-smtp-reaper", daemon=True
            )
            self.reaper.start()

    def _reap_forever(self) -> None:
        while not self.stopping.wait(REAP_EVERY):
            try:
                self.reap()
            except Exception:  # noqa: BLE001 - the next round tries again
                logger.exception("SMTP pool reaper failed")

    def _after_fork(self) -> None:
        """A forked child inherits the parent's sockets: forget them, never QUIT."""
        if self.pid == os.getpid():
            return
        with self.lock:
            self.pid = os.getpid()
            self.idle, self.busy = [], set()
            self.reaper = None
            self.stopping = threading.Event()


def _holder_name() -> str:
    """A budget slot's holder: host, process and connection, for operators."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


pool = Pool()


def probe_relay(*, sender: str, recipient: str) -> None:
    """Ask the relay to take a mail without sending one; raise if it would not.

    On a pooled connection or a new one in a budget slot, so a connection
    cap cannot starve the probe: EHLO, MAIL FROM and RCPT TO (a relay that
    defers every recipient with 421 is down too), then RSET; no data is
    handed over. A 5xx for the recipient still shows a relay that answers.
    Raises what the connection raised, the 4xx reply, or `NoBudget`.
    """
    with pool.connection(wait=2.0) as conn:
        smtp = getattr(conn.backend, "connection", None)
        if smtp is None:  # not an SMTP backend: nothing to probe
            return
        smtp.ehlo_or_helo_if_needed()
        for command, argument in ((smtp.mail, sender), (smtp.rcpt, recipient)):
            code, message = command(argument)
            if 400 <= code < 500:
                conn.broken = True
                raise smtplib.SMTPResponseException(code, message)
        smtp.rset()
