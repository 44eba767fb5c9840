"""Figure: the highest steady arrival rate each system sends at with p99 <= 1 s."""

from bench.fig_latency import measure_at
from bench.harness import Target, render, table_rows
from bench.peers.systems import by_label
from bench.stats import percentile

TEXT = """
## Sustained rate: the highest steady rate at commit-to-250 p99 <= 1 s

bench/peers/driver.py registers users at a fixed rate (one transaction each,
open loop, $drivers processes on one interleaved schedule), relay 0 ms,
everything on this machine. Each system
first climbs a ladder of probing steps of $probe s each until a step's
commit-to-250 p99 passes $bound_ms ms or a driver falls more than $lag_s s
behind its schedule at any registration (the load generator's limit: its
CPU per registration, the system's queuing side, on cores it shares with the
senders). Steps,
registrations/s: $ladder. The highest probe that held is then held for
$window s; if that step misses, the next lower probe that held is, and so on.
A system's sustained rate is the highest rate held for $window s. Its senders
run throughout, started before its first step, after a warm-up of $warm
mails. Latency as in the figure above: from just before the registration's
transaction begins to the relay's 250.

| system | sustained /s | held $window s (rate: p99 ms) | probes, $probe s | stop |
| --- | --- | --- | --- | --- |
$rows
"""

LABELS = [
    "this project",
    "post_office, its Celery trigger",
    "django-mailer, runmailer_pg (PostgreSQL) or runmailer",
    "celery-email, 2 x 16 threads",
]
LADDER = (50, 65, 80, 100, 125, 160, 200, 250, 320)  # failing at 50/s shows 0
BOUND_MS = 1000.0  # the bound on commit-to-250 p99
LAG_S = 1.0  # seconds behind schedule at which the driver is the limit
WARM = 25
PROBE_S = 10  # seconds per probing step; the full window only confirms
DRIVERS = 2  # load-generating processes: one fell behind before some systems did


def run(bench) -> dict:
    found = by_label(bench.stack.database.vendor)
    window = bench.size(60, 10)
    rows = {}
    for index, label in enumerate(LABELS):
        system = found[label]
        bench.peers.prepare(system)
        name = f"sus{index}-"
        if system.peer is None:
            bench.ensure_project_worker()
        elif system.sender:
            bench.peers.start(system, name)
        try:
            measure_at(bench, system, WARM, rate=LADDER[0])
            rows[label] = climb(bench, system, window)
        except Exception as error:  # noqa: BLE001 - a peer that cannot run is reported
            if system.peer is None:
                raise
            rows[label] = {"steps": [], "stop": f"{type(error).__name__}: {error}"}
        finally:
            if system.peer and system.sender:
                bench.peers.stop(system, name)
    probe = min(PROBE_S, window)
    return {"rows": rows, "window": window, "probe": probe, "drivers": DRIVERS}


def climb(bench, system, window: int, probe: int = PROBE_S) -> dict:
    """Probe up the ladder, then hold the highest probe that held for the
    whole window (stepping down past any that miss); every step's result."""
    probes, stop = [], f"none: the ladder ends at {LADDER[-1]}/s"
    for rate in LADDER:
        outcome, why = step(bench, system, rate, probe)
        probes.append(outcome)
        if why:
            stop = why
            break
    if probe >= window:  # the probes were already held for the whole window
        return {"probes": [], "steps": probes, "stop": stop}
    steps = []
    for rate in sorted((r for r, _, held in probes if held), reverse=True):
        outcome, why = step(bench, system, rate, window)
        steps.append(outcome)
        if not why:
            break
        stop += f"; held for {window} s: {why}"
    return {"probes": probes, "steps": steps, "stop": stop}


def step(bench, system, rate: int, seconds: int) -> tuple[tuple, str]:
    """One step at `rate` for `seconds`: (rate, p99, held), and why it did not
    hold ("" if it did)."""
    try:
        delays, lag = measure_at(
            bench, system, rate * seconds, rate=rate, drivers=DRIVERS
        )
    except AssertionError:  # wait_until's timeout: a backlog it cannot drain
        return (rate, float("inf"), False), f"mails still unsent at {rate}/s"
    p99 = percentile(delays, 99)
    behind = f"the driver {lag:.1f} s behind"
    if p99 > BOUND_MS:  # the system missed the bound, whatever the driver did
        late = f" ({behind})" if lag > LAG_S else ""
        return (rate, p99, False), f"p99 {p99:.0f} ms at {rate}/s{late}"
    if lag > LAG_S:
        return (rate, p99, False), f"{behind} at {rate}/s"
    return (rate, p99, True), ""


def sustained(result: dict) -> int:
    """The highest rate held for the whole window (p99 within the bound, the
    driver on time)."""
    return max((rate for rate, _, held in result["steps"] if held), default=0)


def section(data) -> tuple[str, list]:
    rows = []
    for label, result in data["rows"].items():
        steps, probes = (
            ", ".join(f"{rate}: {p99:.0f}" for rate, p99, _ in result.get(key, []))
            or "-"
            for key in ("steps", "probes")
        )
        rows.append([label, str(sustained(result)), steps, probes, result["stop"]])
    text = render(
        TEXT,
        window=data["window"],
        probe=data.get("probe", PROBE_S),
        drivers=data.get("drivers", DRIVERS),
        ladder=", ".join(map(str, LADDER)),
        bound_ms=f"{BOUND_MS:.0f}",
        lag_s=f"{LAG_S:g}",
        warm=WARM,
        rows=table_rows(rows),
    )
    name = "Sustained rate at commit-to-250 p99 <= 1 s > every peer's"
    ours = data["rows"].get("this project")
    peers = {
        k: v for k, v in data["rows"].items() if k != "this project" and v["steps"]
    }
    if ours is None or not peers:
        return text, [Target(name, "not measured", None)]
    best = max(peers, key=lambda k: sustained(peers[k]))
    mine, theirs = sustained(ours), sustained(peers[best])
    capped = ours["stop"].startswith(("the driver", "none"))
    measured = f"{mine}/s vs {theirs}/s ({best})"
    if capped and mine <= theirs:
        measured += "; this project's climb ended at the load generator's limit"
    return text, [Target(name, measured, mine > theirs)]
