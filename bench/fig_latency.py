"""Figure: registration to relay at a steady 50 registrations/s, every system."""

from bench.harness import Target, render, table_rows
from bench.peers.systems import by_label
from bench.stats import Runs, percentile

TEXT = """
## Registration to relay at a steady 50 registrations/s

bench/peers/driver.py registers $count users per run at a fixed 50/s (one
transaction each, open loop), relay 0 ms, $runs runs, systems interleaved
after a warm-up. Latency from just before the registration's transaction
begins to the relay's 250, both on this machine's clock. post_office's
`priority='now'` sends inside the transaction: the request waits for the relay
(the design forbids that), so it is shown but not counted as a queue.

| system | p50 ms | p99 ms |
| --- | --- | --- |
$rows
"""


LABELS = [
    "this project",
    "post_office, priority='now'",
    "post_office, its Celery trigger",
    "django-mailer, runmailer_pg (PostgreSQL) or runmailer",
    "celery-email, 2 x 16 threads",
]


def run(bench) -> dict:
    found = by_label(bench.stack.database.vendor)
    chosen = [found[label] for label in LABELS]
    errors = {}
    for index, system in enumerate(chosen):
        bench.peers.prepare(system)
        try:
            if system.peer is None:
                bench.ensure_project_worker()
            elif system.sender:
                bench.peers.start(system, f"lat{index}-")  # stopped below by index
            measure(bench, system, 25)  # warm-up
        except Exception as error:  # noqa: BLE001 - a peer that cannot run is reported
            errors[system.label] = f"{type(error).__name__}: {str(error)[-300:]}"
    samples = {s.label: {"p50": [], "p99": []} for s in chosen if s.label not in errors}
    count = bench.size(250, 100)
    for _ in range(bench.size(3, 2)):
        for system in chosen:
            if system.label in samples:
                delays = measure(bench, system, count)
                samples[system.label]["p50"].append(percentile(delays, 50))
                samples[system.label]["p99"].append(percentile(delays, 99))
    for index, system in enumerate(chosen):
        if system.peer and system.sender:
            bench.peers.stop(system, f"lat{index}-")
    rows = {label: {k: Runs(v) for k, v in r.items()} for label, r in samples.items()}
    return {"rows": rows, "errors": errors, "count": count, "runs": bench.size(3, 2)}


def measure(bench, system, count: int) -> list[float]:
    return measure_at(bench, system, count, rate=50)[0]


def measure_at(
    bench, system, count: int, *, rate: float, drivers: int = 1
) -> tuple[list, float]:
    """Register `count` users at `rate`/s from `drivers` processes; commit-to-250
    ms of each, and how many seconds a driver fell behind its schedule at worst."""
    prefix = bench.prefix("lat")
    if drivers > 1:
        queued = bench.peers.enqueue_parallel(
            system, drivers=drivers, count=count, rate=rate, prefix=prefix, tag="+d0"
        )
    else:
        queued = bench.peers.enqueue(
            system, count=count, prefix=prefix, tag="+d0", rate=rate
        )
    began = queued["began"]
    accepted = bench.relay.wait_for(list(began), timeout=120 + count / rate)
    return [(accepted[e] - b) * 1000 for e, b in began.items()], queued["lag"]


def section(data) -> tuple[str, list]:
    rows = [
        [label, r["p50"].show(), r["p99"].show()] for label, r in data["rows"].items()
    ]
    rows += [[label, "did not run", error] for label, error in data["errors"].items()]
    text = render(
        TEXT,
        count=data["count"],
        runs=data["runs"],
        rows=table_rows(rows),
    )
    queues = {
        k: v
        for k, v in data["rows"].items()
        if k != "this project" and "'now'" not in k
    }
    name = "Registration-to-relay p99 at 50 registrations/s <= the best peer's"
    if "this project" not in data["rows"] or not queues:
        return text, [Target(name, "not measured", None)]
    best = min(queues, key=lambda k: queues[k]["p99"].median)
    ours, theirs = (
        data["rows"]["this project"]["p99"].median,
        queues[best]["p99"].median,
    )
    return text, [
        Target(name, f"{ours:.1f} vs {theirs:.1f} ms ({best})", ours <= theirs)
    ]
