"""Figure: what the mail path adds to a registration (receiver on vs off)."""

import statistics

from bench import load
from bench.harness import Target, render, table_rows
from bench.stats import Runs

TEXT = """
## The mail path in the request

One client, back to back, $requests registrations per instance in $rounds
rounds of $block, alternating round by round between two gunicorn instances
of the same code, so the machine's drift hits both alike: the
`user_registered` receiver connected (outbox insert + on-commit publish to
Redis) or disconnected (BENCH_MAIL_PATH=off). No worker runs meanwhile.
Median over every registration of an instance; spread: the per-round medians.

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
    latencies = {name: [] for name in ports}
    rounds = {name: [] for name in ports}
    block, count = bench.size(10, 10), bench.size(40, 4)
    for _ in range(count):
        for name, port in ports.items():
            answers, _ = load.closed_loop(
                port=port,
                path="/api/register",
                emails=bench.emails("mp", block),
                clients=1,
            )
            ms = [a.latency * 1000 for a in answers]
            latencies[name] += ms
            rounds[name].append(statistics.median(ms))
    medians = {name: statistics.median(v) for name, v in latencies.items()}
    return {
        "medians": medians,
        "rounds": {k: Runs(v) for k, v in rounds.items()},
        "added": medians["connected"] - medians["disconnected"],
        "requests": block * count,
        "rounds_count": count,
        "block": block,
    }


def section(data) -> tuple[str, list]:
    rows = [
        [name, f"{data['medians'][name]:.1f} {runs.show().split(' ', 1)[1]}"]
        for name, runs in data["rounds"].items()
    ]
    added, median = data["added"], data["medians"]["connected"]
    rows.append(["added by the mail path (difference of the medians)", f"{added:.2f}"])
    share = added / median
    text = render(
        TEXT,
        requests=data["requests"],
        rounds=data["rounds_count"],
        block=data["block"],
        rows=table_rows(rows),
    )
    return text, [
        Target(
            "Mail path cost <= 4% of the median registration",
            f"{added:+.2f} of {median:.1f} ms ({share:.1%})",
            share <= 0.04,
        )
    ]
