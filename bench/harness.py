"""What every figure shares: the stack, the relay's log, counts, targets."""

import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.peers.systems import Peers, systems
from bench.processes import Stack
from tests.support import wait_until


@dataclass
class Target:
    """One of the issue's targets, as measured in this run."""

    name: str
    measured: str
    met: bool | None  # None: not measured in this run
    figure_failed: bool = False  # the figure raised: `make bench` exits 1


class RelayLog:
    """The relay's 250s (recipient -> unix times) and new connections."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.accepted: dict[str, list[float]] = {}
        self.connections = 0

    def poll(self) -> None:
        if not self.path.exists():
            return
        with self.path.open() as log:
            log.seek(self.offset)
            complete = log.read().rpartition("\n")[0]
        if not complete:
            return
        self.offset += len(complete) + 1
        for line in complete.splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "S":
                stamp, _, rcpt = rest.partition(" ")
                self.accepted.setdefault(rcpt, []).append(float(stamp))
            elif kind == "C":
                self.connections += 1

    def wait_for(self, emails, *, timeout: float) -> dict[str, float]:
        """Wait until each address has a 250; the first one's time for each."""

        def done() -> bool:
            self.poll()
            return all(email in self.accepted for email in emails)

        wait_until(done, timeout=timeout, what=f"{len(emails)} mails at the relay")
        return {email: self.accepted[email][0] for email in emails}

    def copies(self, emails) -> Counter:
        """How many 250s each address got (0 for a lost mail)."""
        self.poll()
        return Counter({email: len(self.accepted.get(email, [])) for email in emails})


@dataclass
class Bench:
    """One run: its processes, sizes, and the relay's log; figures share it."""

    stack: Stack
    quick: bool
    serial: int = 0
    worker_pids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.relay = RelayLog(self.stack.relay_log)
        self.peers = Peers(self.stack)
        self.project = systems(self.stack.database.vendor)[0]

    def size(self, full: int, quick: int | None = None) -> int:
        return (quick or max(1, full // 5)) if self.quick else full

    def emails(self, figure: str, count: int, tag: str = "") -> list[str]:
        self.serial += 1
        return [f"f{figure}r{self.serial}n{i}{tag}@bench.example" for i in range(count)]

    def prefix(self, figure: str) -> str:
        """A fresh prefix for bench.peers.driver (addresses `<prefix>n<i>...`)."""
        self.serial += 1
        return f"f{figure}r{self.serial}"

    def web(self, name: str, **extra: str) -> int:
        """A gunicorn as the Procfile runs it (started once); its port."""
        if name not in self.stack.web_ports:
            self.stack.start_web(name, **extra)
        return self.stack.web_ports[name]

    def ensure_project_worker(self) -> list[int]:
        """This project's workers as `make run` starts them (WORKER_PROCESSES)."""
        if not self.worker_pids:
            self.worker_pids = self.peers.start(self.project, "worker")
        return self.worker_pids

    def stop_project_worker(self) -> None:
        self.peers.stop(self.project, "worker")
        self.worker_pids = []


def render(template: str, **values) -> str:
    """Fill a figure's string.Template; tables come in as ready lines."""
    return string.Template(template.strip("\n")).substitute(values) + "\n"


def table_rows(rows: list[list]) -> str:
    """Markdown table rows; the header is in the figure's template."""
    return "\n".join("| " + " | ".join(map(str, row)) + " |" for row in rows)
