"""Figure: registration under load, this project at three relays, inline at 200 ms."""

from bench import load
from bench.harness import Target, render, table_rows
from bench.stats import Runs, percentile

TEXT = """
## Registration under load

20 concurrent clients, `POST /api/register` (JSON), $count registrations per
run ($inline for the inline baseline, which is slow), $runs runs, interleaved.
The inline baseline (bench/views.py, not in the app's URLs) sends the welcome
mail inside the request over a new SMTP connection. Both run the Procfile's
gunicorn (2 sync workers); what bounds this project's requests/s is those two
processes hashing passwords (Argon2id, see above) on two shared cores, not the
mail path.

| configuration | requests/s | p50 ms | p99 ms |
| --- | --- | --- | --- |
$rows

Requests/s at a 200 ms relay: $ratio the same app's at 0 ms (at least 0.9x
when the relay's latency does not reach the request), and $inline_ratio the
inline baseline's. p99 with a 2 s relay vs 0 ms: $change.
"""


def run(bench) -> dict:
    bench.ensure_project_worker()
    web, inline = bench.web("web"), bench.web("web-nomail", BENCH_MAIL_PATH="off")
    count, slow = bench.size(200, 60), bench.size(100, 30)
    configs = [
        ("project, relay 0 ms", web, "/api/register", 0, count),
        ("project, relay 200 ms", web, "/api/register", 200, count),
        ("inline baseline, relay 200 ms", inline, "/bench/inline-register", 200, slow),
        ("project, relay 2 s", web, "/api/register", 2000, count),
    ]
    for _, port, path, delay, _ in configs:  # warm-up
        load.closed_loop(
            port=port,
            path=path,
            emails=bench.emails("reg", 20, f"+d{delay}"),
            clients=20,
        )
    rows = {name: {"rps": [], "p50": [], "p99": []} for name, *_ in configs}
    mailed = []
    for _ in range(bench.size(3, 2)):
        for name, port, path, delay, n in configs:
            emails = bench.emails("reg", n, f"+d{delay}")
            answers, wall = load.closed_loop(
                port=port, path=path, emails=emails, clients=20
            )
            latencies = [a.latency * 1000 for a in answers]
            rows[name]["rps"].append(len(answers) / wall)
            rows[name]["p50"].append(percentile(latencies, 50))
            rows[name]["p99"].append(percentile(latencies, 99))
            mailed += emails
    bench.relay.wait_for(mailed, timeout=240)  # every mail out before the next figure
    return {
        "rows": {n: {k: Runs(v) for k, v in r.items()} for n, r in rows.items()},
        "count": count,
        "inline": slow,
        "runs": bench.size(3, 2),
    }


def section(data) -> tuple[str, list]:
    rows = data["rows"]
    lines = [
        [name, r["rps"].show(), r["p50"].show("{:.0f}"), r["p99"].show("{:.0f}")]
        for name, r in rows.items()
    ]
    rps_0 = rows["project, relay 0 ms"]["rps"].median
    rps_200 = rows["project, relay 200 ms"]["rps"].median
    inline = rps_200 / rows["inline baseline, relay 200 ms"]["rps"].median
    p99_0, p99_2 = (
        rows["project, relay 0 ms"]["p99"].median,
        rows["project, relay 2 s"]["p99"].median,
    )
    change = (p99_2 - p99_0) / p99_0
    text = render(
        TEXT,
        count=data["count"],
        inline=data["inline"],
        runs=data["runs"],
        rows=table_rows(lines),
        ratio=f"{rps_200 / rps_0:.2f}x",
        inline_ratio=f"{inline:.1f}x",
        change=f"{change:+.1%}",
    )
    return text, [
        Target(
            "Registration p99 at a 2 s relay <= 1.1x at a 0 ms relay (one-sided)",
            f"{p99_2 / p99_0:.2f}x ({p99_2:.0f} vs {p99_0:.0f} ms)",
            p99_2 <= 1.1 * p99_0,
        ),
        Target(
            "Requests/s at a 200 ms relay >= 0.9x the same app's at 0 ms",
            f"{rps_200 / rps_0:.2f}x ({rps_200:.1f} vs {rps_0:.1f}/s); "
            f"inline baseline at 200 ms: {inline:.1f}x less",
            rps_200 >= 0.9 * rps_0,
        ),
    ]
