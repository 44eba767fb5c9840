"""Figure: what the mail path adds to a registration (receiver on vs off)."""

import statistics

from bench import load
from bench.harness import Target, render, table_rows
from bench.stats import Runs

TEXT = """
## The mail path in the request

One client, back to back, $requests registrations per run, $runs runs
alternating between two gunicorn instances of the same code: the
`user_registered` receiver connected (outbox insert + on-commit publish to
Redis) or disconnected (BENCH_MAIL_PATH=off). No worker runs meanwhile.

| receiver | median latency, ms |
| --- | --- |
$rows
"""


def run(bench) -> dict:
    ports = {
        "connected": bench.web("web"),
        "disconnected": bench.web("web-nomail", BENCH_MAIL_PATH="off"),
    }
    bench.stop_project_worker()  # the request path only
    for port in ports.values():  # warm-up
        load.closed_loop(
            port=port, path="/api/register", emails=bench.emails("mp", 20), clients=1
        )
    medians = {name: [] for name in ports}
    requests, runs = bench.size(100, 40), bench.size(4, 2)
    for _ in range(runs):
        for name, port in ports.items():
            answers, _ = load.closed_loop(
                port=port,
                path="/api/register",
                emails=bench.emails("mp", requests),
                clients=1,
            )
            medians[name].append(statistics.median(a.latency * 1000 for a in answers))
    added = [
        on - off
        for on, off in zip(medians["connected"], medians["disconnected"], strict=True)
    ]
    return {
        "medians": {k: Runs(v) for k, v in medians.items()},
        "added": Runs(added),
        "requests": requests,
        "runs": runs,
    }


def section(data) -> tuple[str, list]:
    rows = [[name, runs.show()] for name, runs in data["medians"].items()]
    rows.append(["added by the mail path (per-run difference)", data["added"].show()])
    added, median = data["added"].median, data["medians"]["connected"].median
    share = added / median
    text = render(
        TEXT,
        requests=data["requests"],
        runs=data["runs"],
        rows=table_rows(rows),
    )
    return text, [
        Target(
            "Mail path cost <= 5% of the median registration",
            f"{added:+.2f} of {median:.1f} ms ({share:.1%})",
            share <= 0.05,
        )
    ]
