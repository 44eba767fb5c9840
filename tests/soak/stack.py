"""The soak's processes, as the Procfile runs them, each tracked by its pid.

gunicorn (2 workers), two Celery workers (threads pool, 4 threads,
prefetch 16), beat, a redis-server with append-only persistence, the
scriptable relay, and the run's own database. Every process is stopped by
its pid when the run ends, whatever happened.
"""

import http.client
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

from tests.soak.database import SoakDatabase
from tests.soak.relay import ScriptableRelay
from tests.support import (
    BeatProcess,
    GunicornProcess,
    RedisServer,
    WorkerProcess,
    free_port,
    run_manage,
    wait_until,
)
from tests.support.redis import queue_length

WORKER_SLOTS = 2
WORKER_CONCURRENCY = 4  # the Procfile's defaults
WORKER_PREFETCH = 16

# Variables the project reads; none leaks in from the caller's shell, so a
# run measures the shipped defaults unless an override is asked for.
PROJECT_PREFIXES = (
    "MAILER_", "CELERY_", "EMAIL_", "RATELIMIT_", "REDIS_", "DJANGO_", "DB_",
    "DATABASE_URL", "SITE_URL", "DEFAULT_FROM_EMAIL", "HEALTHZ_", "ACCOUNT_",
    "LOG_LEVEL",
)  # fmt: skip


class SoakWorker(WorkerProcess):
    """A Celery worker leading its own process group (killed as a group)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(new_session=True, **kwargs)


class SoakStack:
    """Every process of one soak run."""

    def __init__(
        self, *, directory: Path, database: SoakDatabase, overrides: dict[str, str]
    ) -> None:
        self.directory = directory
        self.database = database
        self.web_port = free_port()
        self.redis = RedisServer(free_port(), appendonly=True)
        self.relay = ScriptableRelay(free_port(), sender_pids=self.worker_pids)
        self.settings = {
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "DJANGO_DEBUG": "0",
            "DATABASE_URL": database.url,
            "REDIS_URL": self.redis.url,
            "EMAIL_HOST": "127.0.0.1",
            "EMAIL_PORT": str(self.relay.port),
            "SITE_URL": f"http://127.0.0.1:{self.web_port}",
            # Every registration comes from 127.0.0.1: the load is not an attack.
            "RATELIMIT_REGISTER_IP": "1000000/h",
            "RATELIMIT_REGISTER_ADDRESS": "1000000/h",
            **overrides,
        }
        self.env = _clean_environment()
        self.env.update(self.settings)
        self.env["DJANGO_SECRET_KEY"] = "soak-only-secret-key-" + "x" * 40
        self.env["PYTHONUNBUFFERED"] = "1"
        self.lock = threading.Lock()
        self.workers: list[SoakWorker | None] = [None] * WORKER_SLOTS
        self.every_worker: list[SoakWorker] = []
        self.web: GunicornProcess | None = None
        self.beat: BeatProcess | None = None
        self.generation = 0

    def start(self) -> "SoakStack":
        self.redis.start()
        self.relay.start()
        migrate = run_manage("migrate", "--noinput", env=self.env, timeout=300)
        if migrate.returncode != 0:
            raise RuntimeError(f"migrate failed:\n{migrate.stdout}{migrate.stderr}")
        self.web = GunicornProcess(
            env=self.env, port=self.web_port, log_path=self.directory / "web.log"
        )
        self.web.start(timeout=60)
        wait_until(self._web_answers, timeout=60, interval=0.2, what="web answers")
        for slot in range(WORKER_SLOTS):
            self.start_worker(slot)
        self.beat = BeatProcess(env=self.env, log_path=self.directory / "beat.log")
        self.beat.start(timeout=60)
        return self

    def start_worker(self, slot: int) -> SoakWorker:
        """Start a new worker in `slot` and wait until it is ready."""
        with self.lock:
            self.generation += 1
            name = f"soak{slot}g{self.generation}"
            worker = SoakWorker(
                env=self.env,
                name=name,
                concurrency=WORKER_CONCURRENCY,
                log_path=self.directory / f"worker-{name}.log",
            )
            worker.args += ["--prefetch-multiplier", str(WORKER_PREFETCH)]
            self.every_worker.append(worker)
        # Redis may be down: the worker waits for it, so allow for a long fault.
        worker.start(timeout=180)
        with self.lock:
            self.workers[slot] = worker
        return worker

    def worker(self, slot: int) -> SoakWorker | None:
        with self.lock:
            return self.workers[slot]

    def worker_pids(self) -> list[int]:
        """Pids of every worker this run started that may still hold a socket."""
        with self.lock:
            return [w.process.pid for w in self.every_worker if w.process is not None]

    def restart_redis(self, *, wipe: bool, downtime: float, stopping) -> None:
        """Stop Redis (SIGTERM), wait `downtime`, start it on the same port.

        With `wipe` its data directory is emptied first: it comes back as a
        server without persistence does, with the queue and unacked set lost.
        """
        self.redis.stop()
        if wipe:
            for entry in self.redis.directory.iterdir():
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        stopping.wait(downtime)
        self.redis.start()

    def queue_length(self) -> int | None:
        """Messages waiting in Redis' default queue; None when Redis is down."""
        try:
            return queue_length(self.redis.client())
        except Exception:  # noqa: BLE001 - any Redis failure means "unknown"
            return None

    def stop(self) -> None:
        """Stop every process this run started, by pid; safe to call twice."""
        with self.lock:
            workers = list(self.every_worker)
        for worker in workers:
            _resume(worker)  # a frozen worker cannot act on SIGTERM
        for worker in workers:
            worker.stop()
        for process in (self.beat, self.web):
            if process is not None:
                process.stop()
        if self.beat is not None:
            self.beat.cleanup()
        self.relay.stop()
        self.redis.cleanup()

    def _web_answers(self) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.web_port, timeout=5)
        try:
            connection.request("GET", "/healthz")
            return connection.getresponse().status in (200, 503)
        except OSError:
            return False
        finally:
            connection.close()


def signal_group(worker: WorkerProcess, signum: int) -> None:
    """Send `signum` to a worker's whole process group (it leads its own)."""
    process = worker.process
    if process is not None and process.poll() is None:
        os.killpg(process.pid, signum)


def _resume(worker: WorkerProcess) -> None:
    try:
        signal_group(worker, signal.SIGCONT)
    except ProcessLookupError:
        pass


def wait_exit(worker: WorkerProcess, timeout: float) -> bool:
    """Wait for a signalled worker to exit; True if it did within `timeout`."""
    process = worker.process
    if process is None:
        return True
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def kill_group(worker: WorkerProcess) -> None:
    """SIGKILL a worker's process group and reap it."""
    signal_group(worker, signal.SIGKILL)
    if worker.process is not None:
        worker.process.wait(10)
    worker.process = None


def _clean_environment() -> dict[str, str]:
    """The caller's environment without any variable the project reads."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(PROJECT_PREFIXES)
    }
