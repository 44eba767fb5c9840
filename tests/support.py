"""Real processes for the integration tests: redis-server, SMTP server, worker.

Every process is started here, tracked by its pid, and stopped by that pid.
"""

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import redis
from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, *, timeout: float, interval: float = 0.05, what: str = ""):
    """Poll `predicate` until it returns a truthy value; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def run_manage(*args: str, env: dict[str, str], timeout: float = 60):
    """Run `python manage.py <args>` from the repository root; capture its output."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def stop_process(process: subprocess.Popen, *, timeout: float = 10.0) -> None:
    """Stop one process we started: SIGTERM, then SIGKILL after `timeout`."""
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(5)


class RedisServer:
    """A private redis-server on a given port, data in a temporary directory."""

    def __init__(self, port: int, *, appendonly: bool = False) -> None:
        self.port = port
        self.appendonly = appendonly
        self.url = f"redis://127.0.0.1:{port}/0"
        self.directory = Path(tempfile.mkdtemp(prefix="test-redis-"))
        self.process: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed (apt-get install redis-server)"
            )
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--dir",
                str(self.directory),
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.ping, timeout=10, what=f"redis-server on :{self.port}")
        return self

    def ping(self) -> bool:
        try:
            return redis.Redis(port=self.port, socket_timeout=0.5).ping()
        except redis.RedisError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


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
    """

    replies: dict[str, list[str]] = field(default_factory=dict)
    delay: float = 0.0
    rcpt_delay: float = 0.0
    rcpt_reply: str = ""


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

    def reset(self) -> None:
        with self.lock:
            self.received.clear()
            self.attempts.clear()
            self.attempt_times.clear()
            self.data_started = 0
            self.rcpt_seen = 0
            self.connections = 0
            self.script = SmtpScript()

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


class ProjectProcess:
    """A project process (gunicorn, a Celery worker or beat) with its own env.

    Started as `python -m <args>` from the repository root, logged to a file,
    ready once `ready` appears in the log, stopped (or killed) by its pid.
    With `new_session` set it leads its own process group, so a fault can
    signal the whole group (os.killpg) without reaching the test process.
    """

    new_session: bool = False

    def __init__(
        self,
        name: str,
        args: list[str],
        *,
        env: dict[str, str],
        ready: bytes,
        log_path: Path | None = None,
    ) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.ready = ready
        self.log_path = log_path or Path(
            tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1]
        )
        self.process: subprocess.Popen | None = None

    def start(self, *, timeout: float = 30.0):
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", *self.args],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=self.new_session,
        )
        log.close()
        wait_until(self._ready, timeout=timeout, what=f"{self.name} ready")
        return self

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited early:\n{self.log()}")
        return self.ready in self.log_path.read_bytes()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=15)
            self.process = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
        self.process = None


class WorkerProcess(ProjectProcess):
    """`celery -A celery_app worker` as a real process."""

    def __init__(
        self,
        *,
        env: dict[str, str],
        name: str = "test",
        pool: str = "threads",
        concurrency: int = 4,
        log_path: Path | None = None,
    ) -> None:
        args = [
            "celery", "-A", "celery_app", "worker",
            "--pool", pool,
            "--concurrency", str(concurrency),
            "--hostname", f"{name}@%h",
            "--loglevel", "INFO",
            "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        super().__init__(name, args, env=env, ready=b" ready.", log_path=log_path)


class BeatProcess(ProjectProcess):
    """`celery -A celery_app beat` as a real process, schedule file in a temp dir."""

    def __init__(self, *, env: dict[str, str], log_path: Path | None = None) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="test-beat-"))
        args = [
            "celery", "-A", "celery_app", "beat",
            "--loglevel", "INFO",
            "--schedule", str(self.directory / "celerybeat-schedule"),
        ]  # fmt: skip
        super().__init__(
            "beat",
            args,
            env=env,
            ready=b"beat: Starting...",
            log_path=log_path or self.directory / "beat.log",
        )

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class GunicornProcess(ProjectProcess):
    """`gunicorn project.wsgi` on a loopback port, as the Procfile runs it."""

    def __init__(
        self, *, env: dict[str, str], port: int, log_path: Path | None = None
    ) -> None:
        self.port = port
        args = [
            "gunicorn", "project.wsgi",
            "--bind", f"127.0.0.1:{port}",
            "--workers", "2",
            "--timeout", "30",
        ]  # fmt: skip
        super().__init__(
            "web", args, env=env, ready=b"Booting worker", log_path=log_path
        )


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
