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

# What Amazon SES answers above an account's maximum sending rate.
THROTTLING_FAILURE = "454 4.7.0 Throttling failure: Maximum sending rate exceeded."


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
    `rcpt_delay` stalls at RCPT TO, before any data was sent; `rcpt_reply`,
    when set, answers every RCPT TO (a relay deferring everyone).
    `max_rate`, when set, is a sending rate in mails per second, as Amazon
    SES enforces it: MAIL FROM above it is answered `throttle_reply`.
    """

    replies: dict[str, list[str]] = field(default_factory=dict)
    delay: float = 0.0
    rcpt_delay: float = 0.0
    rcpt_reply: str = ""
    max_rate: float = 0.0
    throttle_reply: str = THROTTLING_FAILURE


class TokenBucket:
    """`rate` tokens a second, at most one second's worth saved up."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


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
        self.throttled = 0
        self.script = SmtpScript()
        self.bucket: TokenBucket | None = None

    def reset(self) -> None:
        with self.lock:
            self.received.clear()
            self.attempts.clear()
            self.attempt_times.clear()
            self.data_started = 0
            self.rcpt_seen = 0
            self.connections = 0
            self.throttled = 0
            self.script = SmtpScript()
            self.bucket = None

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.script.max_rate:
            with self.lock:
                if self.bucket is None or self.bucket.rate != self.script.max_rate:
                    self.bucket = TokenBucket(self.script.max_rate)
                if not self.bucket.take():
                    self.throttled += 1
                    return self.script.throttle_reply
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


class SmtpServer:
    """A real SMTP server (aiosmtpd) in a thread of the test process."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.handler = RecordingHandler()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=port)

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
