"""The fault stack: a private redis-server, SMTP server, web, worker and beat.

Every fault test builds its own stack of real processes, breaks one of them,
and counts what arrives at the SMTP server. Every process is stopped by pid
when the test ends, whatever happened.
"""

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import worker_env
from tests.support import (
    ROOT,
    BeatProcess,
    GunicornProcess,
    HttpClient,
    RedisServer,
    SilentSmtpServer,
    SmtpServer,
    WorkerProcess,
    free_port,
    register,
)
from tests.support.postfix import NO_LIMITS, AnvilLimits, PostfixRelay, Postgrey
from tests.support.redis import PRIORITY_SUFFIXES

# Short, fast versions of the production timings, so a test sees several
# retries and sweeps within seconds. Ratios between them are kept: the
# send time limit stays below the visibility timeout, the backoff cap too.
FAULT_ENV = {
    "MAILER_RETRY_BACKOFF": "0.5",
    "MAILER_RETRY_BACKOFF_MAX": "4",
    "MAILER_MAX_RETRIES": "12",
    "MAILER_STALE_AFTER": "3",
    "MAILER_SWEEP_INTERVAL": "1",
    "MAILER_SEND_TIME_LIMIT": "10",
    "EMAIL_TIMEOUT": "2",
    "CELERY_VISIBILITY_TIMEOUT": "30",
    # Every registration comes from 127.0.0.1; the burst is not an attack.
    "RATELIMIT_REGISTER_IP": "100000/h",
}

RESULTS = ROOT / "var" / "fault-matrix.json"


@dataclass
class FaultStack:
    """Real processes for one fault test, each tracked and stopped by pid."""

    log_dir: Path
    redis: RedisServer
    smtp_port: int
    env: dict[str, str]
    smtp: SmtpServer | None = None
    silent: SilentSmtpServer | None = None
    web: GunicornProcess | None = None
    http: HttpClient | None = None
    beat: BeatProcess | None = None
    postfix: PostfixRelay | None = None
    postgrey: Postgrey | None = None
    workers: list[WorkerProcess] = field(default_factory=list)

    def start_smtp(self) -> SmtpServer:
        self.smtp = SmtpServer(self.smtp_port).start()
        return self.smtp

    def stop_smtp(self) -> None:
        if self.smtp is not None:
            self.smtp.stop()
        if self.silent is not None:
            self.silent.stop()
            self.silent = None

    def start_postfix(
        self, *, limits: AnvilLimits = NO_LIMITS, greylist_delay: int | None = None
    ) -> SmtpServer:
        """A real Postfix on the stack's SMTP port in front of a sink; return the sink.

        With `greylist_delay`, postgrey greylists every new recipient for
        that many seconds (Postfix asks it at RCPT TO).
        """
        self.smtp = SmtpServer(free_port()).start()
        policy_port = None
        if greylist_delay is not None:
            self.postgrey = Postgrey(delay=greylist_delay).start()
            policy_port = self.postgrey.port
        self.postfix = PostfixRelay(
            port=self.smtp_port,
            sink_port=self.smtp.port,
            limits=limits,
            policy_port=policy_port,
        ).start()
        return self.smtp

    def start_silent_smtp(self, *, greeting: bytes = b"") -> SilentSmtpServer:
        self.silent = SilentSmtpServer(self.smtp_port, greeting=greeting).start()
        return self.silent

    def start_web(self) -> GunicornProcess:
        port = free_port()
        self.web = GunicornProcess(
            env=self.env, port=port, log_path=self.log_dir / "web.log"
        ).start()
        self.http = HttpClient(f"http://127.0.0.1:{port}")
        return self.web

    def start_worker(self, name: str = "fault", **options) -> WorkerProcess:
        worker = WorkerProcess(
            env=self.env,
            name=f"{name}{len(self.workers)}",
            log_path=self.log_dir / f"worker-{name}{len(self.workers)}.log",
            **options,
        ).start()
        self.workers.append(worker)
        return worker

    def start_procfile_workers(self, count: int = 2) -> list[WorkerProcess]:
        """`count` workers as the Procfile runs them, started side by side."""
        workers = [
            WorkerProcess(
                env=self.env,
                name=f"procfile{len(self.workers) + n}",
                log_path=self.log_dir / f"worker-procfile{len(self.workers) + n}.log",
                **WorkerProcess.PROCFILE,
            )
            for n in range(count)
        ]
        self.workers.extend(workers)
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(lambda worker: worker.start(timeout=60), workers))
        return workers

    def start_beat(self) -> BeatProcess:
        self.beat = BeatProcess(env=self.env, log_path=self.log_dir / "beat.log")
        self.beat.start()
        return self.beat

    def register(self, email: str) -> tuple[int, float]:
        """POST /api/register on the real web process; return status and seconds."""
        started = time.monotonic()
        response = register(self.http, email)
        return response.status_code, time.monotonic() - started

    def get(self, path: str) -> tuple[int, dict]:
        response = self.http.get(path)
        return response.status_code, response.json()

    def queued_tasks(self) -> dict[str, set[str]]:
        """Task ids per send-task argument held in Redis (queued or unacked).

        A retry is published under the same task id before its original is
        acked, so distinct task ids, not raw messages, count the copies.
        """
        client = self.redis.client()
        payloads = [
            json.loads(raw)
            for suffix in PRIORITY_SUFFIXES
            for raw in client.lrange("celery" + suffix, 0, -1)
        ]
        payloads += [json.loads(raw)[0] for raw in client.hvals("unacked")]
        tasks: dict[str, set[str]] = {}
        for payload in payloads:
            headers = payload["headers"]
            tasks.setdefault(headers["argsrepr"], set()).add(headers["id"])
        return tasks

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self.beat is not None:
            self.beat.cleanup()
        if self.web is not None:
            self.web.stop()
        if self.postfix is not None:
            self.postfix.cleanup()
        if self.postgrey is not None:
            self.postgrey.cleanup()
        self.stop_smtp()
        self.redis.cleanup()


def _stack(django_db_blocker, tmp_path, **overrides: str):
    redis = RedisServer(free_port()).start()
    smtp_port = free_port()
    with django_db_blocker.unblock():
        env = worker_env(REDIS_URL=redis.url, EMAIL_PORT=str(smtp_port), **overrides)
    stack = FaultStack(log_dir=tmp_path, redis=redis, smtp_port=smtp_port, env=env)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def fault_stack(django_db_blocker, tmp_path):
    """A stack with its own redis-server and SMTP port; processes start on demand."""
    yield from _stack(django_db_blocker, tmp_path, **FAULT_ENV)


@pytest.fixture
def default_stack(django_db_blocker, tmp_path):
    """The same stack on the shipped defaults: no MAILER_* or Celery timing set.

    Only the registration rate limit is lifted (every request comes from
    127.0.0.1), and the worker keeps the suite's real SMTP backend.
    """
    stacks = _stack(django_db_blocker, tmp_path, RATELIMIT_REGISTER_IP="100000/h")
    stack = next(stacks)
    shipped = ("MAILER_", "CELERY_", "EMAIL_TIMEOUT")
    for name in [name for name in stack.env if name.startswith(shipped)]:
        del stack.env[name]
    yield stack
    next(stacks, None)


@pytest.fixture(scope="session")
def fault_matrix():
    """Rows of the fault matrix; written to var/fault-matrix.json at the end."""
    rows: list[dict] = []
    yield rows
    if rows:
        RESULTS.parent.mkdir(exist_ok=True)
        previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        previous.update({row["scenario"]: row for row in rows})
        RESULTS.write_text(json.dumps(previous, indent=2, sort_keys=True))


@pytest.fixture
def record(fault_matrix, request):
    """Record one scenario's outcome for docs/RELIABILITY.md.

    `recovery`: seconds from the fault's end to the last held-up mail;
    `measured`: what a fault with no end (a relay's pace) was measured at.
    """

    def record(
        *,
        scenario: str,
        happened: str,
        expected: int,
        arrived: int,
        duplicates: int,
        recovery: float | None = None,
        measured: str | None = None,
    ) -> None:
        fault_matrix.append(
            {
                "scenario": scenario,
                "test": request.node.nodeid,
                "happened": happened,
                "expected": expected,
                "arrived": arrived,
                "duplicates": duplicates,
                "recovery": recovery,
                "measured": measured,
            }
        )

    return record
