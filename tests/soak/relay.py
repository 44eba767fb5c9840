"""A scriptable SMTP relay in the soak process: accept, refuse, defer, stall, drop,
cap connections, throttle.

It records, for every mail it answers 250 to, the Message-ID, the recipient,
the time of the 250, and which worker process sent it (found from the
client's socket in /proc), so the checker can tell a duplicate from the
documented window from any other.
"""

import asyncio
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from enum import StrEnum
from pathlib import Path

from tests.support import SilentSmtpServer
from tests.support.smtp import ScriptedController


class RelayMode(StrEnum):
    ACCEPT = "accept"
    REFUSE = "refuse"  # nothing listens: connection refused
    DEFER_421 = "defer-421"  # 421 at RCPT TO, for everyone
    DEFER_451 = "defer-451"  # 451 at RCPT TO, for everyone
    STALL_SILENT = "stall-silent"  # TCP accepted, never a greeting
    STALL_SLOW = "stall-slow"  # RCPT TO answered only when the stall ends
    DROP_AFTER_DATA = "drop-after-data"  # the data read, the connection cut
    # Throttling, not an outage: Postfix's anvil over CONNECTION_CAP sessions
    # (421 at the greeting), Amazon SES over THROTTLE_RATE mails a second (454
    # at MAIL FROM, in fixed one-second windows).
    CAP_CONNECTIONS = "cap-connections"
    THROTTLE_RATE = "throttle-rate"


CONNECTION_CAP = 4  # open sessions; below the two workers' 32 threads
THROTTLE_RATE = 5  # mails a second; below the soak's load of 20 a second
TOO_MANY_CONNECTIONS = "421 4.7.0 relay Error: too many connections from 127.0.0.1"
THROTTLING_FAILURE = "454 4.7.0 Throttling failure: Maximum sending rate exceeded."


@dataclass(frozen=True)
class Accepted:
    """One mail the relay answered 250 to."""

    message_id: str
    recipient: str
    at: float  # time.monotonic() of the 250, the soak process's clock
    wall: float  # time.time() of the 250
    sender_pid: int | None  # the worker process whose socket sent it


class RelayHandler:
    """aiosmtpd hooks that obey the relay's mode and record every 250."""

    def __init__(self, sender_pids: Callable[[], Iterable[int]], port: int) -> None:
        self.sender_pids = sender_pids
        self.port = port
        self.mode = RelayMode.ACCEPT
        self.lock = threading.Lock()
        self.accepted: list[Accepted] = []
        self.counts: Counter[str] = Counter()
        self.sessions_open = 0
        self.window_started = 0.0
        self.window_mails = 0

    def session_opened(self) -> str:
        """Count a new session; the greeting that refuses it, or "" to serve it."""
        with self.lock:
            self.sessions_open += 1
            if (
                self.mode is RelayMode.CAP_CONNECTIONS
                and self.sessions_open > CONNECTION_CAP
            ):
                self.counts["refused over the connection cap"] += 1
                return TOO_MANY_CONNECTIONS
            return ""

    def session_closed(self) -> None:
        with self.lock:
            self.sessions_open -= 1

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.mode is RelayMode.THROTTLE_RATE:
            with self.lock:
                now = time.monotonic()
                if now - self.window_started >= 1.0:
                    self.window_started, self.window_mails = now, 0
                if self.window_mails >= THROTTLE_RATE:
                    self.counts["throttled 454"] += 1
                    return THROTTLING_FAILURE
                self.window_mails += 1
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        while self.mode is RelayMode.STALL_SLOW:
            await asyncio.sleep(0.2)
        if self.mode is RelayMode.DEFER_421:
            self._count("deferred 421")
            return "421 4.3.2 Service not available, closing transmission channel"
        if self.mode is RelayMode.DEFER_451:
            self._count("deferred 451")
            return "451 4.3.0 Temporary failure, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        if self.mode is RelayMode.DROP_AFTER_DATA:
            # No reply, so no responsibility taken: a real relay discards it.
            self._count("dropped after DATA")
            server.transport.abort()
            return "451 4.3.0 Connection dropped"  # never reaches the client
        headers = BytesHeaderParser().parsebytes(envelope.original_content)
        message_id = (headers["Message-ID"] or "").strip()
        if not hasattr(session, "sender_pid"):
            # Once per session, while the client's socket is surely open;
            # a worker reuses one session for many mails.
            session.sender_pid = socket_owner(
                session.peer[1], self.port, self.sender_pids()
            )
        pid = session.sender_pid
        at, wall = time.monotonic(), time.time()
        with self.lock:
            for recipient in envelope.rcpt_tos:
                self.accepted.append(
                    Accepted(message_id, recipient.lower(), at, wall, pid)
                )
            self.counts["accepted"] += 1
            if pid is None:
                self.counts["accepted, sender pid unknown"] += 1
        return "250 Message accepted for delivery"

    def _count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1


class ScriptableRelay:
    """The relay on one loopback port; `set_mode` changes how it answers."""

    def __init__(self, port: int, *, sender_pids: Callable[[], Iterable[int]]) -> None:
        self.port = port
        self.handler = RelayHandler(sender_pids, port)
        self.mode = RelayMode.ACCEPT
        self.lock = threading.Lock()
        self.controller: ScriptedController | None = None
        self.silent: SilentSmtpServer | None = None

    def start(self) -> "ScriptableRelay":
        with self.lock:
            self._open(RelayMode.ACCEPT)
        return self

    def set_mode(self, mode: RelayMode) -> None:
        """Answer the next sessions in `mode`; reopen the listener if it changes."""
        with self.lock:
            if _listener(mode) != _listener(self.mode):
                self._close()
                self._open(mode)
            self.handler.mode = mode
            self.mode = mode

    def accepted(self) -> list[Accepted]:
        with self.handler.lock:
            return list(self.handler.accepted)

    def counts(self) -> dict[str, int]:
        with self.handler.lock:
            return dict(self.handler.counts)

    def stop(self) -> None:
        with self.lock:
            self._close()

    def _open(self, mode: RelayMode) -> None:
        listener = _listener(mode)
        if listener == "smtp":
            # A new controller each time: a stopped one has closed its loop.
            self.controller = ScriptedController(
                self.handler, hostname="127.0.0.1", port=self.port, ready_timeout=30
            )
            self.controller.start()
        elif listener == "silent":
            self.silent = SilentSmtpServer(self.port).start()

    def _close(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None
        if self.silent is not None:
            self.silent.stop()
            self.silent = None


def _listener(mode: RelayMode) -> str | None:
    if mode is RelayMode.REFUSE:
        return None
    if mode is RelayMode.STALL_SILENT:
        return "silent"
    return "smtp"


def socket_owner(client_port: int, server_port: int, pids: Iterable[int]) -> int | None:
    """The pid among `pids` holding the TCP socket 127.0.0.1:client_port -> server.

    Reads /proc/net/tcp for the socket's inode, then each candidate's fds.
    """
    inode = _socket_inode(client_port, server_port)
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:
                continue
    return None


def _socket_inode(local_port: int, remote_port: int) -> str | None:
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if (
            int(local.rsplit(":", 1)[1], 16) == local_port
            and int(remote.rsplit(":", 1)[1], 16) == remote_port
        ):
            return inode
    return None
