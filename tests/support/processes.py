"""Project processes (web, worker, beat) and `manage.py` runs.

Every process is started here, tracked by its pid, and stopped by that pid.
Not mirakuru's OutputExecutor: it waits for the ready line on a pipe that
nothing reads afterwards, and the tests read each process's whole log.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


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

    # The Procfile's worker: `--pool threads --concurrency 4 --prefetch-multiplier 16
    # --without-mingle --without-gossip`.
    PROCFILE = {"pool": "threads", "concurrency": 4, "prefetch_multiplier": 16}

    def __init__(
        self,
        *,
        env: dict[str, str],
        name: str = "test",
        pool: str = "threads",
        concurrency: int = 4,
        prefetch_multiplier: int | None = None,
        new_session: bool = False,
        log_path: Path | None = None,
    ) -> None:
        self.new_session = new_session
        args = [
            "celery", "-A", "celery_app", "worker",
            "--pool", pool,
            "--concurrency", str(concurrency),
            "--hostname", f"{name}@%h",
            "--loglevel", "INFO",
            "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        if prefetch_multiplier is not None:
            args += ["--prefetch-multiplier", str(prefetch_multiplier)]
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
