"""The systems side by side: how each is installed, fed and run."""

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.processes import ROOT, Stack, procfile_command, worker_processes
from tests.support import wait_until

PEERS = ROOT / "bench" / "peers"
VENVS = ROOT / "var" / "peers"
PEER_WORKER = ["-m", "celery", "-A", "bench.peers.worker", "worker", "-l", "INFO"]


@dataclass
class System:
    """One system in one configuration; `sender` runs after `python`."""

    label: str
    peer: str | None  # its virtualenv under var/peers/, None for this project
    tuned: bool
    kind: str  # "command": sends the backlog and exits; "loop"/"worker": stays up
    sender: list[list[str]]  # one argv per process
    renders: str
    env: dict[str, str] = field(default_factory=dict)


def systems(vendor: str) -> list[System]:
    project_worker = ["-m", *procfile_command("worker")]
    workers = worker_processes()
    pg = vendor == "postgresql"
    return [
        System(
            "this project",
            None,
            False,
            "worker",
            [project_worker] * workers,
            "at delivery, in the worker",
        ),
        System(
            "post_office, docs",
            "post_office",
            False,
            "command",
            [["-m", "django", "send_queued_mail"]],
            "at queue time, in the request",
        ),
        System(
            "post_office, 2 processes x 16 threads",
            "post_office",
            True,
            "command",
            [["-m", "django", "send_queued_mail", "--processes", "2"]],
            "at queue time, in the request",
        ),
        System(
            "django-mailer, docs (send_mail)",
            "django_mailer",
            False,
            "command",
            [["-m", "django", "send_mail"]],
            "at queue time, in the request",
        ),
        System(
            "django-mailer, " + ("runmailer_pg" if pg else "runmailer, 0.1 s poll"),
            "django_mailer",
            True,
            "loop",
            [["-m", "django", "runmailer_pg" if pg else "runmailer"]],
            "at queue time, in the request",
        ),
        System(
            "celery-email, docs (prefork)",
            "celery_email",
            False,
            "worker",
            [PEER_WORKER],
            "at queue time, in the request",
        ),
        System(
            "celery-email, 2 x 16 threads",
            "celery_email",
            True,
            "worker",
            [[*PEER_WORKER, "--pool", "threads", "--concurrency", "16"]] * workers,
            "at queue time, in the request",
        ),
    ]


def python(peer: str | None) -> str:
    return sys.executable if peer is None else str(VENVS / peer / "bin" / "python")


def ensure_venv(peer: str) -> None:
    """Create var/peers/<peer>/ from bench/peers/<peer>/requirements.txt."""
    wanted = PEERS / peer / "requirements.txt"
    digest = hashlib.sha256(
        wanted.read_bytes() + (ROOT / "requirements.txt").read_bytes()
    ).hexdigest()[:12]
    venv = VENVS / peer
    stamp = venv / f".installed-{digest}"
    if stamp.exists():
        return
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    done = subprocess.run([*pip, "-r", str(wanted)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"installing {wanted} failed:\n{done.stderr[-3000:]}")
    # After site-packages, so django-mailer's `mailer` wins over the project's.
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "bench-root.pth").write_text(f"{ROOT}\n")
    stamp.touch()


class Peers:
    """Each peer's database, environment and processes within one Stack."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.databases: dict[str, str] = {}
        self.redis_db: dict[str, int] = {}

    def env(self, system: System, **extra: str) -> dict[str, str]:
        if system.peer is None:
            return self.stack.env(**system.env, **extra)
        key = self.key(system)
        env = self.stack.env(
            DJANGO_SETTINGS_MODULE="bench.peers.settings",
            BENCH_PEER=system.peer,
            BENCH_TUNED="1" if system.tuned else "0",
            DATABASE_URL=self.databases[key],
            REDIS_URL=f"redis://127.0.0.1:{self.stack.redis_port}/{self.redis_db[key]}",
            BENCH_LOCK=str(self.stack.directory / f"{key}-lock"),
            **system.env,
            **extra,
        )
        env.pop("PYTHONPATH")
        return env

    def cwd(self, system: System) -> Path:
        return ROOT if system.peer is None else VENVS / system.peer

    @staticmethod
    def key(system: System) -> str:
        return f"{system.peer}_{'tuned' if system.tuned else 'docs'}"

    def prepare(self, system: System) -> None:
        """The peer's virtualenv; a database and Redis db of its own per setup."""
        key = self.key(system)
        if system.peer is None or key in self.databases:
            return
        ensure_venv(system.peer)
        self.databases[key] = self.stack.database.sibling(key)
        self.redis_db[key] = len(self.redis_db) + 1
        self.enqueue(system, count=0, prefix="migrate", migrate=True)

    def enqueue(self, system: System, *, env=None, **options) -> dict:
        """Run bench.peers.driver in the system's virtualenv; its JSON answer."""
        argv = [python(system.peer), "-m", "bench.peers.driver"]
        argv += ["--system", system.peer or "project"]
        for name, value in options.items():
            if value is True:
                argv.append(f"--{name}")
            elif value not in (None, False):
                argv += [f"--{name}", str(value)]
        done = subprocess.run(
            argv,
            cwd=self.cwd(system),
            env=self.env(system, **(env or {})),
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode:
            raise RuntimeError(f"{system.label}: driver failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def start(self, system: System, name: str, **extra: str) -> list[int]:
        """Start a loop or worker system's processes; return their pids."""
        pids = []
        for index, argv in enumerate(system.sender):
            proc = f"{name}{index}"
            full = [python(system.peer), *argv]
            if "worker" in argv:
                full += ["--hostname", f"{proc}@%h"]
            process = self.stack.spawn(
                proc, full, self.env(system, **extra), cwd=self.cwd(system)
            )
            pids.append(process.pid)
            if "worker" in argv:
                wait_until(
                    lambda proc=proc: (
                        self.stack.alive(proc) or " ready." in self.stack.log(proc)
                    ),
                    timeout=60,
                    what=proc,
                )
        time.sleep(0.5 if system.kind == "loop" else 0)
        return pids

    def stop(self, system: System, name: str) -> None:
        for index in range(len(system.sender)):
            self.stack.stop(f"{name}{index}")

    def run_command(self, system: System, **extra: str) -> tuple[float, float]:
        """Run a command system until it exits; (CPU seconds with its children,
        the time it started)."""
        argv = [python(system.peer), *system.sender[0]]
        started = time.time()
        with (self.stack.directory / f"{self.key(system)}.log").open("ab") as log:
            process = subprocess.Popen(
                argv,
                cwd=self.cwd(system),
                env=self.env(system, **extra),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode:
            raise RuntimeError(f"{system.label}: {argv} exited {process.returncode}")
        return usage.ru_utime + usage.ru_stime, started
