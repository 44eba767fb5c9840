"""docs/SOAK.md: the run's seed, settings, machine, faults, checker table, verdict."""

import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.soak.checker import LATENESS_ALLOWANCE, Verdict, by_kind
from tests.soak.config import SoakConfig
from tests.soak.faults import AppliedFault, UnexpectedExit
from tests.soak.relay import CONNECTION_CAP, THROTTLE_RATE
from tests.soak.stack import WORKER_CONCURRENCY, WORKER_PREFETCH
from tests.support import ROOT


@dataclass(frozen=True)
class RunFacts:
    """What the report needs besides the verdict."""

    config: SoakConfig
    settings: dict[str, str]  # what the soak set in the processes' environment
    database: str
    redis: str
    started_wall: float
    origin: float  # time.monotonic() when the load started
    load_seconds: float
    drained_after: float | None  # seconds after the load stopped; None: timed out
    max_lateness: float
    scheduled: int  # registrations due while the load ran
    relay_counts: dict[str, int]
    injector_errors: list[str]
    exits: list[UnexpectedExit]  # processes that exited when no fault asked
    load_start_wall: float
    sent: int


def render(facts: RunFacts, verdict: Verdict, faults: list[AppliedFault]) -> str:
    """The whole report as Markdown."""
    parts = [
        "# Fault soak report",
        "",
        "Written by `make soak` (`python -m tests.soak`): real processes under a",
        "steady load of registrations while a seeded injector breaks them, then",
        "a checker compares the relay's record with the database. How to run and",
        'replay it: README, "Fault soak". Times are seconds from the start of',
        "the load (monotonic clock), with UTC wall time in brackets.",
        "",
        *_summary(facts, verdict),
        "",
        "## Run",
        "",
        *_run_table(facts),
        "",
        "## Faults applied",
        "",
        *_fault_table(faults, facts),
        "",
        "## Processes that exited on their own",
        "",
        *_exits(facts),
        "",
        "## Checker",
        "",
        *_checker_table(facts, verdict),
        "",
        "### Recovery per fault",
        "",
        "From the moment the fault ended to the relay's 250 for the last mail it",
        "held up (committed before the fault ended, first 250 after). A mail held",
        "up by several faults, overlapping or in a row, counts for the one that",
        "ended last before its 250.",
        "",
        *_recovery_table(verdict, facts),
        "",
        "### Recovery per kind of fault",
        "",
        "Targets are issue 11's, for reading only; the verdict does not use them.",
        "",
        *_kind_table(verdict),
        "",
        "### Throttling: the pace held",
        "",
        f"While the relay capped connections at {CONNECTION_CAP} (421 at the",
        f"greeting above it) or took at most {THROTTLE_RATE} mails a second (454",
        "Throttling failure at MAIL FROM above it): the relay's 250s a second,",
        "against the allowed rate, or for a cap against the load that arrived",
        "meanwhile (the backlog from earlier faults may add to it).",
        "",
        *_pace_table(verdict),
        "",
        "### Commit to 250 against the faults each mail lived through",
        "",
        "No mail's commit-to-250 may exceed the longest fault that held at any",
        f"moment of it plus {LATENESS_ALLOWANCE:.0f} s (faults that overlap count "
        "as one, from the first start",
        "to the last end); any that does fails the run.",
        "",
        *_late(verdict),
        "",
        "### Duplicates",
        "",
        "Counted by Message-ID. A duplicate is in the documented window when,",
        "for each extra copy, the worker that sent it was SIGKILLed or SIGSTOPped",
        "by the injector after that copy's 250 and before the next copy's: the",
        "relay had the mail and the row was never recorded as sent. Any other",
        "duplicate fails the run.",
        "",
        *_duplicates(verdict),
        "",
        "### Missing mails",
        "",
        "Registered addresses (a 202, or a user row without one) with no 250 at",
        "the relay when the run ended. Any missing mail fails the run.",
        "",
        *_missing(verdict),
        "",
    ]
    return "\n".join(parts)


def _summary(facts: RunFacts, verdict: Verdict) -> list[str]:
    outside = [d for d in verdict.duplicates if not d.in_window]
    verdict_line = "PASS" if verdict.ok else "FAIL"
    lines = [
        f"**Verdict: {verdict_line}** — {verdict.registered} registered, "
        f"{verdict.delivered} got their welcome mail, {len(verdict.missing)} "
        f"missing, {len(verdict.duplicates)} duplicated "
        f"({len(outside)} outside the documented window), "
        f"{len(verdict.unexpected)} unexpected mails, {len(verdict.late)} later "
        f"than their faults allow; {len(facts.exits)} process(es) exited on "
        f"their own; {len(verdict.fault_errors)} fault(s) could not be applied.",
        "",
        f"Seed **{facts.config.seed}** (replay: `SOAK_SEED={facts.config.seed} "
        f"SOAK_MINUTES={facts.config.minutes:g} make soak`).",
    ]
    if facts.config.overrides:
        names = " ".join(f"{k}={v}" for k, v in sorted(facts.config.overrides.items()))
        lines += [
            "",
            f"**Not the shipped defaults**: run with overrides `{names}`.",
        ]
    return lines


PROCESSES = (
    "gunicorn project.wsgi --workers 2; two `celery worker --pool threads "
    f"--concurrency {WORKER_CONCURRENCY} --prefetch-multiplier {WORKER_PREFETCH} "
    "--without-mingle --without-gossip` "
    "(the Procfile's), each leading its own "
    "process group; celery beat; redis-server --appendonly yes; the relay "
    "(aiosmtpd) in the soak process"
)


def _run_table(facts: RunFacts) -> list[str]:
    config = facts.config
    drained = (
        f"{facts.drained_after:.1f} s after the load stopped"
        if facts.drained_after is not None
        else f"not drained within {config.drain_timeout:.0f} s"
    )
    rows = [
        ("started", _utc(facts.started_wall)),
        ("commit", _commit()),
        ("machine", _machine()),
        ("processes", PROCESSES),
        ("database", facts.database),
        ("redis", facts.redis),
        ("SOAK_MINUTES", f"{config.minutes:g} ({facts.load_seconds:.0f} s of load)"),
        ("load", _load(facts)),
        ("drain", drained),
        ("settle", f"{config.settle:g} s after draining, for late copies"),
        ("settings set by the soak", _settings(facts.settings)),
        ("MAILER_* set", _mailer_settings(facts.settings)),
        ("relay answers", _counts(facts.relay_counts)),
    ]
    if facts.injector_errors:
        rows.append(("injector errors", "; ".join(facts.injector_errors)))
    return _table(["", ""], rows)


def _load(facts: RunFacts) -> str:
    return (
        f"{facts.config.rate:g} registrations/s due, open loop, at most 64 in "
        f"flight: {facts.sent} of {facts.scheduled} due were sent "
        f"({facts.sent / facts.load_seconds:.1f}/s); the latest left "
        f"{facts.max_lateness:.1f} s behind schedule"
    )


def _fault_table(faults: list[AppliedFault], facts: RunFacts) -> list[str]:
    rows = []
    for fault in faults:
        if fault.started is None:
            rows.append(
                (
                    f"#{fault.number}",
                    fault.kind.value,
                    "-",
                    "-",
                    "-",
                    "-",
                    "; ".join(fault.notes),
                )
            )
            continue
        rows.append(
            (
                f"#{fault.number}",
                fault.kind.value,
                fault.target,
                f"+{fault.started - facts.origin:.1f} ({_clock(fault.started_wall)})",
                f"+{fault.ended - facts.origin:.1f} ({_clock(fault.ended_wall)})",
                f"{fault.ended - fault.started:.1f}",
                "; ".join(fault.notes),
            )
        )
    if not rows:
        return ["No fault was planned (the run is shorter than the warm-up)."]
    return _table(
        ["#", "kind", "target", "start s (UTC)", "end s (UTC)", "lasted s", "notes"],
        rows,
    )


def _exits(facts: RunFacts) -> list[str]:
    if not facts.exits:
        return ["None: every exit was a fault's."]
    rows = [
        (
            event.name,
            str(event.pid),
            f"+{event.noticed - facts.origin:.1f} ({_clock(event.noticed_wall)})",
            str(event.returncode),
            event.reason,
            event.restarted or "not restarted",
        )
        for event in facts.exits
    ]
    return [
        "Restarted by the soak's supervisor, as systemd or compose would; any",
        "such exit fails the run.",
        "",
        *_table(
            ["process", "pid", "noticed", "exit code", "why (its log)", "restart"], rows
        ),
    ]


def _checker_table(facts: RunFacts, verdict: Verdict) -> list[str]:
    answers = ", ".join(f"{k}: {v}" for k, v in sorted(verdict.answers.items()))
    outside = sum(1 for d in verdict.duplicates if not d.in_window)
    rows = [
        ("registrations sent", str(sum(verdict.answers.values()))),
        ("answers", answers),
        ("registered (202 or a user row)", str(verdict.registered)),
        ("got exactly one welcome mail", str(verdict.exactly_once)),
        ("missing", str(len(verdict.missing))),
        ("duplicated (by Message-ID)", str(len(verdict.duplicates))),
        ("... outside the documented window", str(outside)),
        ("unexpected mails", str(len(verdict.unexpected))),
        ("latency 202 -> 250 p50", _seconds(verdict.latency["p50"])),
        ("latency 202 -> 250 p99", _seconds(verdict.latency["p99"])),
        ("latency 202 -> 250 max", _seconds(verdict.latency["max"])),
    ]
    return _table(["check", "result"], rows)


def _recovery_table(verdict: Verdict, facts: RunFacts) -> list[str]:
    rows = [
        (
            f"#{r.fault.number}",
            r.fault.kind.value,
            f"+{r.fault.ended - facts.origin:.1f}",
            str(r.held),
            str(r.never_delivered),
            _seconds(r.seconds),
            ", ".join(f"#{n}" for n in r.overlapping) or "-",
        )
        for r in verdict.recoveries
    ]
    if not rows:
        return ["No fault ended during the run."]
    return _table(
        [
            "#",
            "kind",
            "ended",
            "mails held",
            "never delivered",
            "recovery",
            "overlapped",
        ],
        rows,
    )


def _kind_table(verdict: Verdict) -> list[str]:
    rows = [
        (
            s.kind.value,
            str(s.faults),
            str(s.held),
            str(s.never_delivered),
            _seconds(s.worst),
            s.target,
        )
        for s in by_kind(verdict.recoveries)
    ]
    if not rows:
        return ["No fault ended during the run."]
    return _table(
        [
            "kind",
            "faults",
            "mails held",
            "never delivered",
            "slowest recovery",
            "target",
        ],
        rows,
    )


def _pace_table(verdict: Verdict) -> list[str]:
    if not verdict.paces:
        return ["No throttling fault in this run."]
    rows = [
        (
            f"#{pace.fault.number}",
            pace.fault.kind.value,
            f"{pace.seconds:.1f}",
            str(pace.accepted),
            f"{pace.achieved:.1f}",
            "-" if pace.allowed is None else f"{pace.allowed:g}",
            f"{pace.offered_rate:.1f}",
            "-" if pace.share is None else f"{pace.share:.0%}",
        )
        for pace in verdict.paces
    ]
    return _table(
        [
            "#",
            "kind",
            "lasted s",
            "250s",
            "achieved /s",
            "allowed /s",
            "load /s",
            "achieved of allowed (or of the load)",
        ],
        rows,
    )


def _late(verdict: Verdict) -> list[str]:
    if not verdict.late:
        return ["None."]
    shown = verdict.late[:50]
    lines = [
        f"- {late.email}: {late.seconds:.1f} s, bound {late.bound:.1f} s "
        f"(faults {', '.join(f'#{n}' for n in late.faults) or 'none'})"
        for late in shown
    ]
    if len(verdict.late) > len(shown):
        lines.append(f"- ... and {len(verdict.late) - len(shown)} more")
    return lines


def _duplicates(verdict: Verdict) -> list[str]:
    if not verdict.duplicates and not verdict.unexpected:
        return ["None."]
    lines = [
        f"- `{d.message_id}` to {d.email}: {len(d.copies)} copies, "
        f"{'in' if d.in_window else '**outside**'} the documented window "
        f"({d.explanation})"
        for d in verdict.duplicates
    ]
    lines += [f"- unexpected: {problem}" for problem in verdict.unexpected]
    return lines


def _missing(verdict: Verdict) -> list[str]:
    if not verdict.missing:
        return ["None."]
    shown = verdict.missing[:50]
    lines = [
        f"- {m.email}: row {m.status or 'absent'}, attempts {m.attempts}, "
        f"answer {m.answered or 'none'}, last error {m.last_error or '-'}"
        for m in shown
    ]
    if len(verdict.missing) > len(shown):
        lines.append(f"- ... and {len(verdict.missing) - len(shown)} more")
    return lines


def _table(header: list[str], rows) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return lines


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))


def _settings(settings: dict[str, str]) -> str:
    return ", ".join(f"`{k}={v}`" for k, v in sorted(settings.items()))


def _mailer_settings(settings: dict[str, str]) -> str:
    mailer = {k: v for k, v in settings.items() if k.startswith("MAILER_")}
    return _settings(mailer) if mailer else "none (the shipped defaults)"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _utc(wall: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(wall))


def _clock(wall: float | None) -> str:
    if wall is None:
        return "-"
    return time.strftime("%H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 10)}"


def _commit() -> str:
    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        return result.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = " (with uncommitted changes)" if git("status", "--porcelain") else ""
    return f"{head} on {git('rev-parse', '--abbrev-ref', 'HEAD')}{dirty}"


def _machine() -> str:
    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({cpu}), "
        f"load average {load} at the end, Python {platform.python_version()}"
    )


def write_report(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
