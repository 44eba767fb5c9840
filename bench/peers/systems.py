"""The systems side by side: how each is installed, fed and run."""

import hashlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench.processes import ROOT, Stack, procfile_command, worker_processes
from tests.support import wait_until

VENVS = ROOT / "var" / "peers"
PEER_WORKER = ["-m", "celery", "-A", "bench.peers.worker", "worker", "-l", "INFO"]
# Tuned: threads and no wait for neighbours, as this project's Procfile worker
# runs, at 16 per process: celery-email opens a connection per task, so more
# threads than this project's 4 keep more of its mails on the wire.
THREADS = ["--pool", "threads", "--concurrency", "16"]
THREADS += ["--without-mingle", "--without-gossip"]
COMMAND = ["-m", "django"]
DRIVER_SETUP_S = 5.0  # parallel drivers start their schedule this long after launch


@dataclass
class System:
    """One system in one configuration; each `sender` argv runs after `python`."""

    label: str
    peer: str | None  # its virtualenv under var/peers/, None for this project
    tuned: bool
    kind: str  # "command" sends the backlog and exits; "worker"/"loop" stay up
    sender: list[list[str]]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.peer}_{'tuned' if self.tuned else 'docs'}"


def systems(vendor: str) -> list[System]:
    """This project as the Procfile runs it; each peer as documented and tuned."""
    workers = worker_processes()
    loop = "runmailer_pg" if vendor == "postgresql" else "runmailer"
    return [
        System("this project", None, False, "worker",
               [["-m", *procfile_command("worker")]] * workers),
        System("post_office, docs", "post_office", False, "command",
               [[*COMMAND, "send_queued_mail"]]),
        System("post_office, 2 processes x 16 threads", "post_office", True,
               "command", [[*COMMAND, "send_queued_mail", "--processes", "2"]]),
        System("django-mailer, docs (send_mail)", "django_mailer", False,
               "command", [[*COMMAND, "send_mail"]]),
        System("django-mailer, runmailer_pg (PostgreSQL) or runmailer",
               "django_mailer", True, "loop", [[*COMMAND, loop]]),
        System("celery-email, docs (prefork)", "celery_email", False, "worker",
               [PEER_WORKER]),
        System("celery-email, 2 x 16 threads", "celery_email", True, "worker",
               [[*PEER_WORKER, *THREADS]] * workers),
    ]  # fmt: skip


def by_label(vendor: str) -> dict[str, System]:
    """Every system and the two post_office modes only the latency and faults
    figures run: `priority='now'` (sent in the request) and its Celery trigger."""
    found = {s.label: s for s in systems(vendor)}
    docs = found["post_office, docs"]
    now = replace(docs, label="post_office, priority='now'", kind="inline", sender=[])
    found[now.label] = replace(now, env={"BENCH_PRIORITY": "now"})
    found["post_office, its Celery trigger"] = replace(
        docs, label="post_office, its Celery trigger", kind="worker",
        sender=[PEER_WORKER], env={"BENCH_CELERY": "1"},
    )  # fmt: skip
    return found


def python(peer: str | None) -> str:
    return sys.executable if peer is None else str(VENVS / peer / "bin" / "python")


def ensure_venv(peer: str) -> None:
    """Make var/peers/<peer>/ from bench/peers/<peer>/requirements.txt."""
    wanted = ROOT / "bench" / "peers" / peer / "requirements.txt"
    pins = wanted.read_bytes() + (ROOT / "requirements.txt").read_bytes()
    venv = VENVS / peer
    stamp = venv / f".installed-{hashlib.sha256(pins).hexdigest()[:12]}"
    if stamp.exists():
        return
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "-r"]
    done = subprocess.run([*pip, str(wanted)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"installing {wanted} failed:\n{done.stderr[-3000:]}")
    # After site-packages, so django-mailer's `mailer` wins over the project's.
    next(venv.glob("lib/python*/site-packages")).joinpath("bench.pth").write_text(
        f"{ROOT}\n"
    )
    stamp.touch()


class Peers:
    """Each system's database, environment and processes within one Stack."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.databases: dict[str, str] = {}
        self.redis_db: dict[str, int] = {}
        self.stale_locks: Counter = Counter()  # system label -> locks cleared

    def env(self, system: System, **extra: str) -> dict[str, str]:
        if system.peer is None:
            return self.stack.env(**system.env, **extra)
        env = self.stack.env(
            DJANGO_SETTINGS_MODULE="bench.peers.settings",
            BENCH_PEER=system.peer,
            BENCH_TUNED="1" if system.tuned else "0",
            DATABASE_URL=self.databases[system.key],
            REDIS_URL=f"{self.stack.redis_url(self.redis_db[system.key])}",
            BENCH_LOCK=str(self.lock(system)),
            **system.env,
            **extra,
        )
        env.pop("PYTHONPATH")
        return env

    def lock(self, system: System) -> Path:
        """The peer's lock file path (django-mailer adds ".lock" to it)."""
        return self.stack.directory / f"{system.key}-lock"

    def cwd(self, system: System):
        return ROOT if system.peer is None else VENVS / system.peer

    def prepare(self, system: System) -> None:
        """The peer's virtualenv; a database and Redis db of its own per setup."""
        if system.peer is None or system.key in self.databases:
            return
        ensure_venv(system.peer)
        self.databases[system.key] = self.stack.database.sibling(system.key)
        self.redis_db[system.key] = len(self.redis_db) + 1
        self.enqueue(system, count=0, migrate=True)

    def enqueue(self, system: System, **options) -> dict:
        """Run bench.peers.driver in the system's virtualenv; its JSON answer."""
        argv = [python(system.peer), "-m", "bench.peers.driver"]
        argv += ["--system", system.peer or "project"]
        for name, value in options.items():
            argv += [f"--{name}"] if value is True else [f"--{name}", str(value)]
        done = subprocess.run(
            argv, cwd=self.cwd(system), env=self.env(system), capture_output=True,
            text=True, timeout=600,
        )  # fmt: skip
        if done.returncode:
            raise RuntimeError(f"{system.label}: driver failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def enqueue_parallel(
        self, system: System, *, drivers: int, count: int, rate: float, **options
    ) -> dict:
        """`drivers` drivers at once, each with its share of `count` at its
        share of `rate`, their schedules interleaved on one clock (driver k
        starts k/rate s after the first); their JSON answers merged."""
        argv = [python(system.peer), "-m", "bench.peers.driver"]
        argv += ["--system", system.peer or "project"]
        for name, value in options.items():
            argv += [f"--{name}"] if value is True else [f"--{name}", str(value)]
        start = time.time() + DRIVER_SETUP_S
        running = []
        for k in range(drivers):
            share = count // drivers + (k < count % drivers)
            extra = ["--count", str(share), "--rate", str(rate / drivers)]
            extra += ["--start-at", str(start + k / rate)]
            prefix = ["--prefix", f"{options.get('prefix', 'x')}k{k}"]
            running.append(
                subprocess.Popen(
                    [*argv, *extra, *prefix],
                    cwd=self.cwd(system),
                    env=self.env(system),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )  # fmt: skip
            )
        answers = []
        for driver in running:
            out, err = driver.communicate(timeout=600)
            if driver.returncode:
                raise RuntimeError(f"{system.label}: driver failed:\n{err[-3000:]}")
            answers.append(json.loads(out.strip().splitlines()[-1]))
        sizes = [len(a["began"]) for a in answers]
        return {
            "began": {e: t for a in answers for e, t in a["began"].items()},
            "cpu_ms": sum(a["cpu_ms"] * n for a, n in zip(answers, sizes, strict=True))
            / max(1, sum(sizes)),
            "done": max(a["done"] for a in answers),
            "lag": max(a["lag"] for a in answers),
        }

    def start(self, system: System, name: str) -> list[int]:
        """Start a loop or worker system's processes; return their pids."""
        pids, workers = [], []
        for index, argv in enumerate(system.sender):  # all at once, as a deploy
            proc, worker = f"{name}{index}", "worker" in argv
            argv = [python(system.peer), *argv]
            argv += ["--hostname", f"{proc}@%h"] if worker else []
            env, cwd = self.env(system), self.cwd(system)
            if worker:  # its log is appended to by every start under this name
                workers.append((proc, self.readies(proc)))
            pids.append(self.stack.spawn(proc, argv, env, cwd=cwd).pid)
        for proc, before in workers:
            self.wait_ready(proc, before)
        time.sleep(0.5 if system.kind == "loop" else 0)
        return pids

    def readies(self, proc: str) -> int:
        """How many times the worker's log says it was ready."""
        logged = self.stack.directory / f"{proc}.log"
        return self.stack.log(proc).count(" ready.") if logged.exists() else 0

    def wait_ready(self, proc: str, before: int = 0) -> None:
        """Wait for a " ready." beyond the `before` of earlier starts."""
        wait_until(
            lambda: self.stack.alive(proc) or self.readies(proc) > before,
            timeout=60,
            what=proc,
        )

    def stop(self, system: System, name: str) -> None:
        for index in range(len(system.sender)):
            self.stack.stop(f"{name}{index}")
        self.clear_stale_lock(system)

    def clear_stale_lock(self, system: System) -> None:
        """Delete the lock file a stopped django-mailer loop left behind.

        runmailer_pg's beat runs send_all() every MAILER_EMPTY_QUEUE_SLEEP, and
        send_all() holds MAILER_LOCK_PATH + ".lock" while it runs; SIGTERM ends
        the process without releasing it, and a loop started on it only logs
        "lock already in place. quitting." (the Faults figure shows that).
        The process is gone, so the lock is stale; counted for the figures.
        """
        left = self.lock(system).with_name(self.lock(system).name + ".lock")
        if system.kind == "loop" and left.exists():
            left.unlink()
            self.stale_locks[system.label] += 1

    def run_command(self, system: System, started=None) -> tuple[float, float]:
        """Run a command system to its end: (CPU seconds with its children,
        when it started); `started(pid)` is called once it runs."""
        argv, began = [python(system.peer), *system.sender[0]], time.time()
        with (self.stack.directory / f"{system.key}.log").open("ab") as log:
            process = subprocess.Popen(
                argv, cwd=self.cwd(system), env=self.env(system), stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        if started is not None:
            started(process.pid)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode:
            raise RuntimeError(f"{system.label}: {argv} exited {process.returncode}")
        return usage.ru_utime + usage.ru_stime, began
