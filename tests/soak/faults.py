"""The fault injector: a seeded plan of faults, applied to real processes.

The plan is drawn from random.Random(seed) before the run starts, so a seed
replays the same faults at the same offsets. Each fault runs in its own
thread and holds a lock on what it breaks (a worker slot, Redis, the relay,
PostgreSQL): faults on different parts overlap, faults on one part queue.
"""

import dataclasses
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from tests.soak.relay import RelayMode
from tests.soak.stack import (
    WORKER_SLOTS,
    SoakStack,
    kill_group,
    signal_group,
    wait_exit,
)


class FaultKind(StrEnum):
    WORKER_KILL = "worker-sigkill"
    WORKER_TERM = "worker-sigterm"
    WORKER_FREEZE = "worker-sigstop"
    REDIS_RESTART = "redis-restart-aof"
    REDIS_RESTART_EMPTY = "redis-restart-empty"
    REDIS_DOWN = "redis-down"
    RELAY_REFUSE = "relay-refuse"
    RELAY_DEFER_421 = "relay-defer-421"
    RELAY_DEFER_451 = "relay-defer-451"
    RELAY_STALL_SILENT = "relay-stall-silent"
    RELAY_STALL_SLOW = "relay-stall-slow"
    RELAY_DROP = "relay-drop-after-data"
    RELAY_CONNECTION_CAP = "relay-connection-cap"
    RELAY_THROTTLE = "relay-throttle-454"
    POSTGRES_KILL = "postgres-kill-backends"


WORKER_KINDS = {FaultKind.WORKER_KILL, FaultKind.WORKER_TERM, FaultKind.WORKER_FREEZE}
RELAY_MODES = {
    FaultKind.RELAY_REFUSE: RelayMode.REFUSE,
    FaultKind.RELAY_DEFER_421: RelayMode.DEFER_421,
    FaultKind.RELAY_DEFER_451: RelayMode.DEFER_451,
    FaultKind.RELAY_STALL_SILENT: RelayMode.STALL_SILENT,
    FaultKind.RELAY_STALL_SLOW: RelayMode.STALL_SLOW,
    FaultKind.RELAY_DROP: RelayMode.DROP_AFTER_DATA,
    FaultKind.RELAY_CONNECTION_CAP: RelayMode.CAP_CONNECTIONS,
    FaultKind.RELAY_THROTTLE: RelayMode.THROTTLE_RATE,
}
# A relay that throttles sets the pace; it is not down.
THROTTLE_KINDS = {FaultKind.RELAY_CONNECTION_CAP, FaultKind.RELAY_THROTTLE}

# Seconds each kind holds: how long a part stays broken, or for a kill, how
# long until the supervisor starts the replacement.
HOLD = {
    FaultKind.WORKER_KILL: (0.0, 5.0),
    FaultKind.WORKER_TERM: (0.0, 5.0),
    FaultKind.WORKER_FREEZE: (5.0, 40.0),
    FaultKind.REDIS_RESTART: (0.0, 2.0),
    FaultKind.REDIS_RESTART_EMPTY: (0.0, 2.0),
    FaultKind.REDIS_DOWN: (5.0, 30.0),
    FaultKind.POSTGRES_KILL: (2.0, 8.0),
    **dict.fromkeys(RELAY_MODES, (10.0, 45.0)),
}
GAP = (4.0, 25.0)  # seconds between one fault's start and the next's
TAIL = 5.0  # every fault ends this long before the load stops
# Seconds a part gets between two faults, e.g. for a replacement worker to boot.
SETTLE_BEFORE_NEXT = 5.0
DRAIN_GRACE = 60.0  # seconds a SIGTERMed worker may take to finish its tasks


@dataclass(frozen=True)
class PlannedFault:
    number: int
    kind: FaultKind
    at: float  # seconds after the load started
    hold: float
    slot: int | None = None  # the worker slot, for worker faults


@dataclass
class AppliedFault:
    """What a fault did and when (time.monotonic() and time.time())."""

    planned: PlannedFault
    target: str = ""
    pid: int | None = None  # the worker process it killed or froze
    abrupt: bool = False  # killed or frozen: may leave a mail in the window
    started: float | None = None
    started_wall: float | None = None
    ended: float | None = None
    ended_wall: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def kind(self) -> FaultKind:
        return self.planned.kind

    @property
    def number(self) -> int:
        return self.planned.number


def available_kinds(*, postgres: bool, only: tuple[str, ...] = ()) -> list[FaultKind]:
    """The kinds a run draws from: all (PostgreSQL ones only on PostgreSQL)."""
    kinds = [k for k in FaultKind if postgres or k is not FaultKind.POSTGRES_KILL]
    if only:
        unknown = set(only) - {k.value for k in FaultKind}
        if unknown:
            raise ValueError(f"unknown fault kinds: {', '.join(sorted(unknown))}")
        kinds = [k for k in kinds if k.value in only]
        if not kinds:
            raise ValueError("SOAK_FAULTS leaves no fault this database can take")
    return kinds


def plan_faults(
    *, seed: int, seconds: float, warmup: float, kinds: list[FaultKind]
) -> list[PlannedFault]:
    """Draw the run's faults from the seed: kinds, offsets, holds, targets."""
    rng = random.Random(seed)
    plan: list[PlannedFault] = []
    free_at: dict[str, float] = {}  # when each part is no longer broken
    at = warmup
    while True:
        kind = rng.choice(kinds)
        low, high = HOLD[kind]
        hold = round(rng.uniform(low, high), 1)
        slot = rng.randrange(WORKER_SLOTS) if kind in WORKER_KINDS else None
        part = part_of(kind, slot)
        # A part already broken is broken again once it is back, not twice.
        start = max(at, free_at.get(part, 0.0))
        hold = round(min(hold, seconds - TAIL - start), 1)
        if hold >= low:
            plan.append(PlannedFault(len(plan) + 1, kind, round(start, 1), hold, slot))
            free_at[part] = start + hold + SETTLE_BEFORE_NEXT
        at += rng.uniform(*GAP)
        if at + TAIL >= seconds:
            break
    in_order = sorted(plan, key=lambda fault: fault.at)
    return [dataclasses.replace(f, number=n) for n, f in enumerate(in_order, 1)]


def part_of(kind: FaultKind, slot: int | None) -> str:
    """What a fault breaks: faults on one part run one after another."""
    if kind in WORKER_KINDS:
        return f"worker{slot}"
    if kind in RELAY_MODES:
        return "relay"
    if kind is FaultKind.POSTGRES_KILL:
        return "postgres"
    return "redis"


class FaultInjector:
    """Apply a plan against a stack, one thread per fault."""

    def __init__(
        self, stack: SoakStack, plan: list[PlannedFault], *, origin: float, say
    ) -> None:
        self.stack = stack
        self.plan = plan
        self.origin = origin
        self.say = say
        self.stopping = threading.Event()
        self.locks: dict[str, threading.Lock] = {}
        self.applied = [AppliedFault(planned) for planned in plan]
        self.errors: list[str] = []
        self.threads = [
            threading.Thread(target=self._run, args=(fault,), daemon=True)
            for fault in self.applied
        ]

    def start(self) -> "FaultInjector":
        for thread in self.threads:
            thread.start()
        return self

    def active(self) -> list[AppliedFault]:
        return [f for f in self.applied if f.started and not f.ended]

    def stop(self, *, timeout: float) -> None:
        """Cut every hold short, wait (bounded) for each fault to undo itself."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self, fault: AppliedFault) -> None:
        planned = fault.planned
        if self.stopping.wait(max(0.0, self.origin + planned.at - time.monotonic())):
            fault.notes.append("not applied: the run ended first")
            return
        with self._lock_for(planned):
            if self.stopping.is_set():
                fault.notes.append("not applied: the run ended first")
                return
            late = time.monotonic() - self.origin - planned.at
            if late > 1:
                fault.notes.append(f"started {late:.1f} s late (waited for its part)")
            try:
                APPLY[planned.kind](self, fault)
            except Exception as error:  # noqa: BLE001 - reported, the run goes on
                message = f"#{planned.number} {planned.kind}: {error!r}"
                fault.notes.append(f"error: {error!r}")
                self.errors.append(message)
                self.say(f"fault error {message}")
            if fault.ended is None and fault.started is not None:
                self._end(fault)
        self.say(_describe(fault, self.origin))

    def _lock_for(self, planned: PlannedFault) -> threading.Lock:
        part = part_of(planned.kind, planned.slot)
        return self.locks.setdefault(part, threading.Lock())

    def _begin(self, fault: AppliedFault, target: str) -> None:
        fault.target = target
        fault.started, fault.started_wall = time.monotonic(), time.time()

    def _end(self, fault: AppliedFault) -> None:
        fault.ended, fault.ended_wall = time.monotonic(), time.time()

    def _hold(self, seconds: float) -> None:
        self.stopping.wait(seconds)

    def _worker(self, fault: AppliedFault):
        slot = fault.planned.slot
        worker = self.stack.worker(slot)
        if worker is None or worker.process is None:
            raise RuntimeError(f"no live worker in slot {slot}")
        fault.pid = worker.process.pid
        return worker, f"worker slot {slot} ({worker.name}, pid {fault.pid})"

    def _replace(self, fault: AppliedFault) -> None:
        started = time.monotonic()
        new = self.stack.start_worker(fault.planned.slot)
        fault.notes.append(
            f"replacement {new.name} pid {new.process.pid} ready after "
            f"{time.monotonic() - started:.1f} s"
        )

    def kill_worker(self, fault: AppliedFault) -> None:
        """SIGKILL a worker's process group; start a new worker after the hold."""
        worker, target = self._worker(fault)
        fault.abrupt = True
        self._begin(fault, target)
        kill_group(worker)
        self._hold(fault.planned.hold)
        self._replace(fault)
        self._end(fault)

    def terminate_worker(self, fault: AppliedFault) -> None:
        """SIGTERM a worker (warm shutdown: it drains); then start a new one."""
        worker, target = self._worker(fault)
        self._begin(fault, target)
        signal_group(worker, signal.SIGTERM)
        started = time.monotonic()
        if wait_exit(worker, DRAIN_GRACE):
            fault.notes.append(
                f"drained and exited in {time.monotonic() - started:.1f} s"
            )
            worker.process = None
        else:
            fault.abrupt = True
            fault.notes.append(f"still running after {DRAIN_GRACE:.0f} s: SIGKILLed")
            kill_group(worker)
        self._hold(fault.planned.hold)
        self._replace(fault)
        self._end(fault)

    def freeze_worker(self, fault: AppliedFault) -> None:
        """SIGSTOP a worker's process group for the hold, then SIGCONT it."""
        worker, target = self._worker(fault)
        fault.abrupt = True
        self._begin(fault, target)
        signal_group(worker, signal.SIGSTOP)
        self._hold(fault.planned.hold)
        signal_group(worker, signal.SIGCONT)
        self._end(fault)

    def restart_redis(self, fault: AppliedFault, *, wipe: bool) -> None:
        self._begin(fault, f"redis-server :{self.stack.redis.port}")
        self.stack.restart_redis(
            wipe=wipe, downtime=fault.planned.hold, stopping=self.stopping
        )
        self._end(fault)

    def break_relay(self, fault: AppliedFault) -> None:
        self._begin(fault, f"relay :{self.stack.relay.port}")
        self.stack.relay.set_mode(RELAY_MODES[fault.kind])
        self._hold(fault.planned.hold)
        self.stack.relay.set_mode(RelayMode.ACCEPT)
        self._end(fault)

    def kill_postgres_backends(self, fault: AppliedFault) -> None:
        """pg_terminate_backend the soak database's backends, every second."""
        self._begin(fault, f"PostgreSQL database {self.stack.database.name}")
        deadline = time.monotonic() + fault.planned.hold
        killed = rounds = 0
        while True:
            killed += self.stack.database.terminate_backends()
            rounds += 1
            if time.monotonic() >= deadline or self.stopping.wait(1.0):
                break
        fault.notes.append(f"{killed} backends terminated in {rounds} rounds")
        self._end(fault)


@dataclass
class UnexpectedExit:
    """A process that exited when no fault asked it to."""

    name: str
    pid: int
    returncode: int | None
    noticed: float  # time.monotonic()
    noticed_wall: float
    reason: str  # the log's last "Unrecoverable error" or last line
    restarted: str = ""


class Supervisor:
    """Restart a worker or beat that exited on its own, as systemd or compose would.

    Honcho would stop the whole stack instead; a deploy's supervisor
    restarts the one process. Each exit is recorded for the report. A
    worker slot a fault is working on (its lock held) is left to the fault.
    """

    def __init__(self, stack: SoakStack, locks: dict[str, threading.Lock], say):
        self.stack = stack
        self.locks = locks
        self.say = say
        self.exits: list[UnexpectedExit] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> "Supervisor":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(200)

    def _watch(self) -> None:
        while not self.stopping.wait(1.0):
            try:
                self._check_once()
            except Exception as error:  # noqa: BLE001 - keep watching, say why
                self.say(f"supervisor: a restart failed: {error!r}")
                if self.exits:
                    self.exits[-1].restarted = f"restart failed: {error!r}"

    def _check_once(self) -> None:
        for slot in range(WORKER_SLOTS):
            lock = self.locks.setdefault(
                part_of(FaultKind.WORKER_KILL, slot), threading.Lock()
            )
            if lock.acquire(blocking=False):
                try:
                    self._restart_worker_if_gone(slot)
                finally:
                    lock.release()
        self._restart_beat_if_gone()

    def _restart_worker_if_gone(self, slot: int) -> None:
        worker = self.stack.worker(slot)
        if worker is None or worker.process is None or worker.process.poll() is None:
            return
        event = self._record(worker)
        worker.process = None
        new = self.stack.start_worker(slot)
        waited = time.monotonic() - event.noticed
        event.restarted = f"{new.name} pid {new.process.pid} ready after {waited:.1f} s"

    def _restart_beat_if_gone(self) -> None:
        beat = self.stack.beat
        if beat is None or beat.process is None or beat.process.poll() is None:
            return
        event = self._record(beat)
        beat.process = None
        beat.start(timeout=180)
        waited = time.monotonic() - event.noticed
        event.restarted = f"pid {beat.process.pid} ready after {waited:.1f} s"

    def _record(self, process) -> UnexpectedExit:
        event = UnexpectedExit(
            name=process.name,
            pid=process.process.pid,
            returncode=process.process.returncode,
            noticed=time.monotonic(),
            noticed_wall=time.time(),
            reason=exit_reason(process.log()),
        )
        self.exits.append(event)
        self.say(
            f"{event.name} pid {event.pid} exited on its own "
            f"(code {event.returncode}): {event.reason}"
        )
        return event


def exit_reason(log: str) -> str:
    """The line of a log that says why the process ended, else its last line."""
    lines = [line for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Unrecoverable error" in line or "CRITICAL" in line:
            return line.strip()[:300]
    return lines[-1].strip()[:300] if lines else "(empty log)"


APPLY: dict[FaultKind, Callable[[FaultInjector, AppliedFault], None]] = {
    FaultKind.WORKER_KILL: FaultInjector.kill_worker,
    FaultKind.WORKER_TERM: FaultInjector.terminate_worker,
    FaultKind.WORKER_FREEZE: FaultInjector.freeze_worker,
    FaultKind.REDIS_RESTART: lambda i, f: i.restart_redis(f, wipe=False),
    FaultKind.REDIS_RESTART_EMPTY: lambda i, f: i.restart_redis(f, wipe=True),
    FaultKind.REDIS_DOWN: lambda i, f: i.restart_redis(f, wipe=False),
    FaultKind.POSTGRES_KILL: FaultInjector.kill_postgres_backends,
    **dict.fromkeys(RELAY_MODES, FaultInjector.break_relay),
}


def _describe(fault: AppliedFault, origin: float) -> str:
    planned = fault.planned
    if fault.started is None:
        return f"fault #{planned.number} {planned.kind}: {'; '.join(fault.notes)}"
    span = f"+{fault.started - origin:.1f}s .. +{(fault.ended or 0) - origin:.1f}s"
    notes = f" ({'; '.join(fault.notes)})" if fault.notes else ""
    return f"fault #{planned.number} {planned.kind} {fault.target} {span}{notes}"
