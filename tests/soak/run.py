"""One soak run: start the stack, load it, break it, drain, check, report."""

import atexit
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.soak.checker import Verdict, WelcomeRow, check
from tests.soak.config import SoakConfig
from tests.soak.database import SoakDatabase, timestamp
from tests.soak.faults import (
    FaultInjector,
    Supervisor,
    available_kinds,
    plan_faults,
)
from tests.soak.load import RegistrationLoad
from tests.soak.report import RunFacts, render
from tests.soak.stack import SoakStack

PROGRESS_EVERY = 30.0  # seconds between progress lines
FAULT_UNDO_TIMEOUT = 240.0  # seconds for the faults still running to undo themselves

WELCOME_ROWS = """
    SELECT u.email, d.message_id, d.status, d.attempts, d.created_at, d.last_error
    FROM users_user u
    LEFT JOIN mailer_delivery d ON d.user_id = u.id AND d.kind = 'welcome'
"""
UNFINISHED = (
    "SELECT count(*) FROM mailer_delivery "
    "WHERE kind = 'welcome' AND status IN ('pending', 'sending')"
)


@dataclass
class SoakOutcome:
    verdict: Verdict
    report: str
    log_dir: Path | None  # kept when the run failed or SOAK_KEEP_LOGS is set


def say(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_soak(config: SoakConfig) -> SoakOutcome:
    """Run one soak as `config` says; always stop every process it started."""
    directory = Path(tempfile.mkdtemp(prefix="soak-"))
    database = SoakDatabase(server_url=config.database_server, directory=directory)
    stack = SoakStack(
        directory=directory, database=database, overrides=config.overrides
    )
    atexit.register(stack.stop)
    keep = config.keep_logs
    say(
        f"seed {config.seed}; {config.minutes:g} min at {config.rate:g}/s; "
        f"logs in {directory}"
    )
    if config.overrides:
        say(f"NOT the shipped defaults, overrides: {config.overrides}")
    try:
        database.create()
        outcome = _run(config, stack, database)
        keep = keep or not outcome.verdict.ok
        if keep:
            # With the logs, where a pruned pytest tmp_path cannot lose it.
            (directory / "SOAK.md").write_text(outcome.report)
            outcome.log_dir = directory
        return outcome
    except BaseException:
        keep = True
        raise
    finally:
        stack.stop()
        atexit.unregister(stack.stop)
        database.drop()
        if keep:
            say(f"logs kept in {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


def _run(config: SoakConfig, stack: SoakStack, database: SoakDatabase) -> SoakOutcome:
    started_wall = time.time()
    stack.start()
    kinds = available_kinds(postgres=database.vendor == "postgresql", only=config.kinds)
    plan = plan_faults(
        seed=config.seed, seconds=config.seconds, warmup=config.warmup, kinds=kinds
    )
    for planned in plan:
        say(
            f"plan #{planned.number} {planned.kind} at +{planned.at:.1f}s "
            f"hold {planned.hold:.1f}s slot {planned.slot}"
        )
    load = RegistrationLoad(
        port=stack.web_port, rate=config.rate, prefix=f"s{config.seed}"
    )
    origin, load_start_wall = time.monotonic(), time.time()
    load.start()
    injector = FaultInjector(stack, plan, origin=origin, say=say).start()
    supervisor = Supervisor(stack, injector.locks, say).start()
    _wait_for_load(config, stack, load, injector, origin)
    registrations = load.stop()
    load_seconds = time.monotonic() - origin
    say(f"load stopped: {len(registrations)} registrations sent")
    injector.stop(timeout=FAULT_UNDO_TIMEOUT)
    drained_after = _drain(config, stack, database)
    say(f"settling {config.settle:g} s for late copies")
    time.sleep(config.settle)
    supervisor.stop()
    stack.stop()  # nothing writes any more: the checker reads a still picture
    rows = _welcome_rows(database, origin, load_start_wall)
    accepted = stack.relay.accepted()
    _save_records(
        stack.directory / "records.json", registrations, accepted, injector, supervisor
    )
    verdict = check(
        registrations=registrations,
        rows=rows,
        accepted=accepted,
        faults=injector.applied,
        exits=[f"{e.name} pid {e.pid}: {e.reason}" for e in supervisor.exits],
        fault_errors=injector.errors,
    )
    facts = RunFacts(
        config=config,
        settings=stack.settings,
        database=database.version(),
        redis=_redis_version(),
        started_wall=started_wall,
        origin=origin,
        load_seconds=load_seconds,
        drained_after=drained_after,
        max_lateness=load.max_lateness,
        scheduled=load.scheduled,
        relay_counts=stack.relay.counts(),
        injector_errors=injector.errors,
        exits=supervisor.exits,
        load_start_wall=load_start_wall,
        sent=len(registrations),
    )
    return SoakOutcome(verdict, render(facts, verdict, injector.applied), None)


def _wait_for_load(config, stack, load, injector, origin) -> None:
    """Let the load run its length, saying every so often how it goes."""
    deadline = origin + config.seconds
    next_line = origin + PROGRESS_EVERY
    while (now := time.monotonic()) < deadline:
        time.sleep(min(1.0, deadline - now))
        if time.monotonic() >= next_line:
            next_line += PROGRESS_EVERY
            sent = load.snapshot()
            answered = sum(1 for r in sent if r.status == 202)
            active = ", ".join(f"#{f.number} {f.kind}" for f in injector.active())
            say(
                f"+{time.monotonic() - origin:.0f}s: {len(sent)} sent, {answered} "
                f"answered 202, {len(stack.relay.accepted())} mails at the relay, "
                f"queue {stack.queue_length()}, faults now: {active or 'none'}"
            )


def _drain(config: SoakConfig, stack: SoakStack, database: SoakDatabase):
    """Wait until no welcome row is pending or sending; seconds taken, or None."""
    started = time.monotonic()
    deadline = started + config.drain_timeout
    next_line = started + PROGRESS_EVERY
    while True:
        unfinished = _unfinished(database)
        if unfinished == 0:
            say(f"drained after {time.monotonic() - started:.1f} s")
            return time.monotonic() - started
        if time.monotonic() >= deadline:
            say(f"not drained after {config.drain_timeout:g} s: {unfinished} left")
            return None
        if time.monotonic() >= next_line:
            next_line += PROGRESS_EVERY
            say(
                f"draining: {unfinished} rows pending or sending, "
                f"queue {stack.queue_length()}"
            )
        time.sleep(1.0)


def _unfinished(database: SoakDatabase) -> int | None:
    try:
        return database.rows(UNFINISHED)[0][0]
    except Exception:  # noqa: BLE001 - a busy or restarting database: ask again
        return None


def _welcome_rows(
    database: SoakDatabase, origin: float, load_start_wall: float
) -> list[WelcomeRow]:
    """Every user and its welcome row, with created_at on the monotonic clock."""
    rows = []
    for email, message_id, status, attempts, created, error in database.rows(
        WELCOME_ROWS
    ):
        created_wall = timestamp(created)
        created_at = (
            None if created_wall is None else origin + created_wall - load_start_wall
        )
        rows.append(
            WelcomeRow(email, message_id, status, attempts, created_at, error or "")
        )
    return rows


def _save_records(path: Path, registrations, accepted, injector, supervisor) -> None:
    """Keep the checker's inputs next to the logs, for a look after the run."""
    records = {
        "exits": [dataclasses.asdict(e) for e in supervisor.exits],
        "registrations": [dataclasses.asdict(r) for r in registrations],
        "accepted": [dataclasses.asdict(a) for a in accepted],
        "faults": [dataclasses.asdict(f) for f in injector.applied],
    }
    path.write_text(json.dumps(records))


def _redis_version() -> str:
    binary = shutil.which("redis-server") or "redis-server"
    result = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=10
    )
    return result.stdout.strip() or "unknown"


def print_summary(outcome: SoakOutcome) -> None:
    """The report's tables on the terminal."""
    sys.stdout.write(outcome.report)
    sys.stdout.flush()
