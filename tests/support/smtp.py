"""SMTP servers in the test process: one that records and obeys a script, one silent."""

import asyncio
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.content, policy=policy.default)

    def text(self) -> str:
        return self.message.get_body(preferencelist=("plain",)).get_content()

    def html(self) -> str:
        return self.message.get_body(preferencelist=("html",)).get_content()


@dataclass
class SmtpScript:
    """Replies the test server gives, per recipient, attempt by attempt.

    `delay` stalls after the message data arrived (the relay has the mail);
    `drop_after_data` reads the data, then cuts the connection with no reply
    and keeps nothing (a relay whose disk is full, or whose filter crashes);
    `rcpt_delay` stalls at RCPT TO, before any data was sent; `rcpt_reply`,
    when set, answers every RCPT TO (a relay deferring everyone).

    A throttling relay: above `max_connections` open sessions a new one gets
    `connection_reply` at the greeting and is closed (Postfix's anvil); above
    `rate` mails per `rate_window` seconds (a fixed window, as anvil counts)
    MAIL FROM gets `rate_reply` (SES's words by default).
    """

    replies: dict[str, list[str]] = field(default_factory=dict)
    delay: float = 0.0
    rcpt_delay: float = 0.0
    rcpt_reply: str = ""
    drop_after_data: bool = False
    max_connections: int = 0
    connection_reply: str = (
        "421 4.7.0 127.0.0.1 Error: too many connections from 127.0.0.1"
    )
    rate: int = 0
    rate_window: float = 1.0
    rate_reply: str = "454 Throttling failure: Maximum sending rate exceeded."


class RecordingHandler:
    """An aiosmtpd handler that keeps every accepted mail and obeys a script."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[ReceivedMail] = []
        self.attempts: dict[str, int] = defaultdict(int)
        self.attempt_times: dict[str, list[float]] = defaultdict(list)
        self.data_started = 0
        self.rcpt_seen = 0
        self.connections = 0
        self.script = SmtpScript()
        self.sessions_open = 0
        self.most_sessions_open = 0
        self.refused_connections = 0
        self.refused_mails = 0
        self.window_started = 0.0
        self.window_mails = 0

    def reset(self) -> None:
        with self.lock:
            self.received.clear()
            self.attempts.clear()
            self.attempt_times.clear()
            self.data_started = 0
            self.rcpt_seen = 0
            self.connections = 0
            self.script = SmtpScript()
            self.most_sessions_open = self.sessions_open
            self.refused_connections = 0
            self.refused_mails = 0
            self.window_started = 0.0
            self.window_mails = 0

    def session_opened(self) -> str:
        """Count a new session; the greeting to refuse it with, or "" to serve it."""
        with self.lock:
            self.sessions_open += 1
            self.most_sessions_open = max(self.most_sessions_open, self.sessions_open)
            cap = self.script.max_connections
            if cap and self.sessions_open > cap:
                self.refused_connections += 1
                return self.script.connection_reply
            return ""

    def session_closed(self) -> None:
        with self.lock:
            self.sessions_open -= 1

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        with self.lock:
            if self.script.rate:
                now = time.monotonic()
                if now - self.window_started >= self.script.rate_window:
                    self.window_started, self.window_mails = now, 0
                if self.window_mails >= self.script.rate:
                    self.refused_mails += 1
                    return self.script.rate_reply
                self.window_mails += 1
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.lock:
            self.rcpt_seen += 1
        if self.script.rcpt_delay:
            await asyncio.sleep(self.script.rcpt_delay)
        if self.script.rcpt_reply:
            return self.script.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        with self.lock:
            self.connections += 1
        return responses

    async def handle_DATA(self, server, session, envelope) -> str:
        with self.lock:
            self.data_started += 1
            reply = "250 Message accepted for delivery"
            for rcpt in envelope.rcpt_tos:
                self.attempts[rcpt] += 1
                self.attempt_times[rcpt].append(time.monotonic())
                scripted = self.script.replies.get(rcpt.lower())
                if scripted:
                    reply = scripted.pop(0)
            if self.script.drop_after_data:
                server.transport.abort()
                return "451 4.3.0 Connection dropped"  # never reaches the client
            if reply.startswith("250"):
                # Like a real relay: once the data is in, the mail is queued,
                # whether or not the client is still there for the reply.
                self.received.append(
                    ReceivedMail(
                        envelope.mail_from, list(envelope.rcpt_tos), envelope.content
                    )
                )
        if self.script.delay:
            await asyncio.sleep(self.script.delay)
        return reply

    def mails_to(self, address: str) -> list[ReceivedMail]:
        with self.lock:
            return [
                m
                for m in self.received
                if address.lower() in map(str.lower, m.rcpt_tos)
            ]


class ScriptedSMTP(SMTP):
    """aiosmtpd's SMTP session, counted, and refused at the greeting over a cap."""

    def connection_made(self, transport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            self.refusal = self.event_handler.session_opened()

    def connection_lost(self, error) -> None:
        self.event_handler.session_closed()
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if getattr(self, "refusal", ""):
            await self.push(self.refusal)
            self.transport.close()
            return
        await super()._handle_client()


class ScriptedController(Controller):
    def factory(self):
        return ScriptedSMTP(self.handler, **self.SMTP_kwargs)


class SmtpServer:
    """A real SMTP server (aiosmtpd) in a thread of the test process."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.handler = RecordingHandler()
        self.controller = ScriptedController(
            self.handler, hostname="127.0.0.1", port=port
        )

    def start(self) -> "SmtpServer":
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()


class SilentSmtpServer:
    """Accepts TCP connections on a port and never says a word.

    With a `greeting` it says that one line and hangs up instead (a relay
    answering 421 at connect).
    """

    def __init__(self, port: int, *, greeting: bytes = b"") -> None:
        self.port = port
        self.greeting = greeting
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.settimeout(0.1)
        self.accepted: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> "SilentSmtpServer":
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(16)
        self.thread.start()
        return self

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            if self.greeting:
                conn.sendall(self.greeting)
                conn.close()
                continue
            self.accepted.append(conn)

    def stop(self) -> None:
        # Let the accept loop end first: a socket closed under a blocked
        # accept() keeps its port bound.
        self.stopping.set()
        self.thread.join(2)
        self.sock.close()
        for conn in self.accepted:
            conn.close()
