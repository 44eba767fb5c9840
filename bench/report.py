"""Write docs/BENCHMARKS.md from one run's results."""

import os
import platform
import subprocess
import time
from importlib.metadata import version
from pathlib import Path

from bench.processes import ROOT


def machine() -> list[str]:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(
        next(
            line.split()[1]
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    )
    redis = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True
    ).stdout.split()
    redis_version = next((w[2:] for w in redis if w.startswith("v=")), "?")
    return [
        f"CPU: {cpu}, {os.cpu_count()} cores; RAM {mem_kb / 1024 / 1024:.1f} GiB; "
        f"{platform.system()} {platform.release()}",
        f"Python {platform.python_version()}, Django {version('django')}, "
        f"Celery {version('celery')}, kombu {version('kombu')}, "
        f"django-celery-results {version('django-celery-results')}, "
        f"gunicorn {version('gunicorn')}, aiosmtpd {version('aiosmtpd')}, "
        f"redis-server {redis_version}",
    ]


def mark(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def write_report(path, *, results, command, quick, database, load, elapsed) -> None:
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (bench/); rerun it to replace this page. Every "
        "process (redis-server, the aiosmtpd relay, gunicorn, Celery workers, "
        "the database) was started by the run on free loopback ports and "
        "stopped by pid. Each figure: median over runs, spread as (min-max) "
        "of the per-run values; ratios come from the same run.",
        "",
        f"- Command: `{command}`" + (" (quick mode: small counts)" if quick else ""),
        f"- Date: {time.strftime('%Y-%m-%d %H:%M %Z')}, commit {git}, "
        f"run took {elapsed / 60:.1f} min",
        *[f"- {line}" for line in machine()],
        f"- Database: {database.vendor} ({database.server_version()}), "
        "one fresh database for the run",
        f"- Load average (1/5/15 min) at start {_load(load[0])}, at end "
        f"{_load(load[1])}: other engineers' test suites may have shared this "
        "machine, so treat small differences with care.",
        f"- The load generator, relay, Redis, database, web and workers all share "
        f"these {os.cpu_count()} cores.",
        f"- Web: `{_procfile('web')}` (DJANGO_SETTINGS_MODULE=bench.settings: the "
        "project's settings plus the bench-only inline view).",
        f"- This project's workers: {results.get('project_workers', '?')} "
        f"processes of `{results.get('project_worker', '?')}` (the Procfile's, "
        "each with its own `--hostname`; `make run` starts WORKER_PROCESSES of "
        "them, compose as many replicas).",
        f"- Naive worker: `{results.get('naive_worker', '?')}`, "
        "CELERY_DB_REUSE_MAX=0 and CONN_MAX_AGE=0 (a new database connection "
        "per task, Celery's default), CELERY_RESULT_BACKEND=django-db "
        "(django-celery-results' own writes), a new SMTP connection per mail.",
        "",
    ]
    targets: list[tuple[str, str, bool | None]] = []
    lines += _hashing(results)
    lines += _fig1(results, targets)
    lines += _fig2(results, targets)
    lines += _fig3(results, targets)
    lines += _fig4(results, targets)
    lines += _fig5(results, targets)
    lines += _fig6(results, targets)
    lines += ["## Targets", "", "| target | measured | |", "| --- | --- | --- |"]
    for target, measured, ok in targets:
        lines.append(f"| {target} | {measured} | {'n/a' if ok is None else mark(ok)} |")
    lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def _load(values) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def _procfile(name: str) -> str:
    from bench.processes import procfile_command

    return " ".join(procfile_command(name))


def _hashing(results) -> list[str]:
    rows = results.get("hashing")
    if not rows:
        return []
    out = [
        "## Password hashing",
        "",
        "One `hasher.encode()` in the bench process, milliseconds, median "
        "(min-max) of single calls. It runs once per registration, inside the "
        "request.",
        "",
        "| hasher | ms per hash |",
        "| --- | --- |",
    ]
    out += [f"| {label} | {runs.show()} |" for label, runs in rows]
    return [*out, ""]


def _fig1(results, targets) -> list[str]:
    data = results.get("fig1")
    if not data:
        return []
    project, inline, runs = results["fig1_counts"]
    out = [
        "## 1. Registration under load",
        "",
        f"20 concurrent clients, `POST /api/register` (JSON), {project} "
        f"registrations per run for this project and {inline} for the inline "
        f"baseline (it is slow), {runs} runs, interleaved. The relay delays "
        "each message as given. The inline baseline (bench/views.py, not in the "
        "app's URLs) sends the welcome mail inside the request over a new SMTP "
        "connection.",
        "",
        "| configuration | requests/s | p50 ms | p99 ms |",
        "| --- | --- | --- | --- |",
    ]
    for name, row in data.items():
        out.append(
            f"| {name} | {row['rps'].show()} | {row['p50'].show('{:.0f}')} | "
            f"{row['p99'].show('{:.0f}')} |"
        )
    fast = data["project, relay 200 ms"]["rps"].median
    slow = data["inline baseline, relay 200 ms"]["rps"].median
    p99_0 = data["project, relay 0 ms"]["p99"].median
    p99_2 = data["project, relay 2 s"]["p99"].median
    change = (p99_2 - p99_0) / p99_0 * 100
    out += [
        "",
        f"Ratio at a 200 ms relay: {fast / slow:.1f}x the inline baseline's "
        f"requests/s. p99 with a 2 s relay vs 0 ms: {change:+.1f}%.",
        "",
    ]
    targets.append(
        (
            "Registration p99, 2 s relay within 10% of 0 ms relay",
            f"{p99_2:.0f} vs {p99_0:.0f} ms ({change:+.1f}%)",
            abs(change) <= 10,
        )
    )
    targets.append(
        (
            "Requests/s at 200 ms relay >= 8x inline baseline",
            f"{fast / slow:.1f}x",
            fast / slow >= 8,
        )
    )
    return out


def _fig2(results, targets) -> list[str]:
    data = results.get("fig2")
    if not data:
        return []
    hashing = results.get("hashing")
    out = [
        "## 2. The mail path in the request",
        "",
        f"One client, back to back, {data['requests']} registrations per run, "
        f"{data['runs']} runs alternating between two gunicorn instances of the "
        "same code: one with the `user_registered` receiver connected (outbox "
        "insert + on-commit publish to Redis), one with it disconnected "
        "(BENCH_MAIL_PATH=off). No worker runs during this figure, so only the "
        "request path is measured.",
        "",
        "| receiver | median latency, ms |",
        "| --- | --- |",
        f"| connected | {data['connected'].show()} |",
        f"| disconnected | {data['disconnected'].show()} |",
        f"| added by the mail path (per-run difference) | {data['added'].show()} |",
        "",
    ]
    added = data["added"].median
    median = data["connected"].median
    if hashing:
        hash_ms = hashing[0][1].median
        out += [
            f"Of the {median:.1f} ms median, the password hash alone takes "
            f"{hash_ms:.1f} ms ({hash_ms / median * 100:.0f}%), see above.",
            "",
        ]
    targets.append(
        (
            "Mail path adds <= 2 ms to median registration latency",
            f"{added:+.2f} ms",
            added <= 2,
        )
    )
    targets.append(
        (
            "Registration median latency <= 40 ms (Argon2id, OWASP minimum)",
            f"{median:.1f} ms (one client)",
            median <= 40,
        )
    )
    return out


def _fig3(results, targets) -> list[str]:
    data = results.get("fig3")
    if not data:
        return []
    naive_count, project_count, runs = results["fig3_counts"]
    out = [
        "## 3. Mail throughput at a 50 ms relay",
        "",
        f"Rows committed in one transaction, then one task published per row; "
        "timed from the commit to the relay's last 250. "
        f"{naive_count} mails per run for the naive worker, {project_count} for "
        f"this project's, {runs} runs, interleaved (both workers up, each on its "
        "own queue). Worker CPU is user+system time of the worker processes "
        "(this project's all of them; the naive one's with its pool processes) "
        "over the run, divided by the mails.",
        "",
        "| worker | mails/s | worker CPU ms per mail | SMTP connections per run |",
        "| --- | --- | --- | --- |",
    ]
    for name, row in data.items():
        out.append(
            f"| {name} | {row['rate'].show()} | {row['cpu'].show('{:.2f}')} | "
            f"{row['connections'].show('{:.0f}')} |"
        )
    ratio = data["project"]["rate"].median / data["naive"]["rate"].median
    cpu = data["project"]["cpu"].median
    naive_cpu = data["naive"]["cpu"].median
    out += [
        "",
        f"Ratio: {ratio:.1f}x the naive worker's mails/s, at {cpu / naive_cpu:.0%} "
        "of its CPU per mail. CPU milliseconds depend on the machine (a shared "
        "virtual machine, a different one from one session to the next): read "
        "them against the naive worker's, measured in the same minutes.",
        "",
    ]
    floor = results.get("fig3_floor")
    if floor:
        out += [
            "The floor under that CPU figure: the same workers running a task "
            "that does nothing (bench/tasks.py `do_nothing`: `acks_late`, task "
            "events, STARTED and SUCCESS results, as the send), "
            f"{project_count} per run, {runs} runs: "
            f"{floor['rate'].show()} tasks/s and {floor['cpu'].show('{:.2f}')} ms "
            "of worker CPU per task. That is Celery's consumer (receive, unacked "
            "bookkeeping in Redis, ack), three task events, tracing and the two "
            "result writes, all of which the design asks for; the send (claim, "
            "render, MIME, four SMTP round trips, `mark_sent`) is the rest.",
            "",
        ]
    targets.append(
        (
            "Mail throughput at 50 ms relay >= 10x naive worker",
            f"{ratio:.1f}x",
            ratio >= 10,
        )
    )
    targets.append(
        (
            "Worker CPU <= 3 ms per mail",
            f"{cpu:.2f} ms (naive worker: {naive_cpu:.2f} ms)",
            cpu <= 3,
        )
    )
    return out


def _fig4(results, targets) -> list[str]:
    data = results.get("fig4")
    if not data:
        return []
    out = [
        "## 4. Result storage per task (django-celery-results)",
        "",
        f"bench/result_cost.py, {results['fig4_tasks']} simulated tasks per run: "
        "Celery's Django fixup hooks, this project's connection receivers, and "
        "the two result writes each task makes (STARTED, then SUCCESS). "
        "Median ms per task (min-max over runs).",
        "",
        "| database | naive: new connection per task, `django-db` writes "
        "| connections reused, `django-db` writes | this project: connections "
        "reused, one statement per state |",
        "| --- | --- | --- | --- |",
    ]
    for label, row in data.items():
        cells = [row[name].show("{:.2f}") for name in ("naive", "reused", "project")]
        out.append(f"| {label} | {' | '.join(cells)} |")
    out += [
        "",
        "Why the naive setup is slow: Celery's Django fixup closes every "
        "database connection before and after each task "
        "(celery/fixups/django.py, `close_database`), so each task opens a new "
        "PostgreSQL connection (TCP, startup, Django's session setup) before "
        "its two result writes. `CELERY_DB_REUSE_MAX` makes the fixup keep "
        "them; mailer/connections.py closes a connection that errored, aged "
        "past `CONN_MAX_AGE`, or served a task that did not succeed. "
        "What is left is the writes: django-celery-results stores each state "
        "with `get_or_create()` and `save()` (STARTED: SELECT, BEGIN, INSERT, "
        "COMMIT; SUCCESS: SELECT, UPDATE). mailer/results.py stores each with "
        "one `INSERT ... ON CONFLICT (task_id) DO UPDATE`, the same row.",
        "",
    ]
    if "PostgreSQL" in data:
        ms = data["PostgreSQL"]["project"].median
        targets.append(
            ("Result storage <= 2 ms per task on PostgreSQL", f"{ms:.2f} ms", ms <= 2)
        )
    else:
        targets.append(
            (
                "Result storage <= 2 ms per task on PostgreSQL",
                "not measured (DATABASE_URL is not PostgreSQL)",
                None,
            )
        )
    return out


def _fig5(results, targets) -> list[str]:
    if "fig5" not in results:
        return []
    data = results["fig5"]
    out = ["## 5. `resend_failed` dispatch rate", ""]
    if data is None:
        out += [
            "not available: `python manage.py resend_failed` does not exist "
            "in this checkout yet.",
            "",
        ]
        targets.append(("10,000 reruns dispatched in <= 10 s", "not available", None))
        return out
    out += [
        f"`python manage.py resend_failed --limit {data['rows']}` over "
        f"{data['rows']} failed rows, {data['runs']} runs (rows reset to failed "
        "and the queue emptied between runs), no worker consuming. Wall time "
        "of the whole command, Django start-up included.",
        "",
        "| rows | seconds | rows/s | messages in the queue after each run |",
        "| --- | --- | --- | --- |",
        f"| {data['rows']} | {data['seconds'].show('{:.2f}')} | "
        f"{data['rate'].show('{:.0f}')} | {', '.join(map(str, data['dispatched']))} |",
        "",
    ]
    seconds = data["seconds"].median * 10_000 / data["rows"]
    label = "" if data["rows"] == 10_000 else f" (scaled from {data['rows']})"
    targets.append(
        (
            "10,000 reruns dispatched in <= 10 s",
            f"{seconds:.2f} s{label}",
            seconds <= 10,
        )
    )
    return out


def _fig6(results, targets) -> list[str]:
    data = results.get("fig6")
    if not data:
        return []
    out = [
        "## 6. Commit to relay at a steady 50 registrations/s",
        "",
        f"{data['count']} registrations per run at a fixed 50/s (open loop: "
        f"sent on schedule whatever the answers do; the sender fell at most "
        f"{data['sender_behind_ms']:.0f} ms behind), {data['runs']} runs, relay "
        "0 ms. Latency from the user row's `date_joined` (set just before the "
        "INSERT, so slightly before the commit: conservative) to the relay's "
        "250, both read from this machine's clock.",
        "",
        "| | p50 ms | p99 ms |",
        "| --- | --- | --- |",
        f"| commit to relay's 250 | {data['p50'].show()} | {data['p99'].show()} |",
        f"| registration request | {data['registration_p50'].show()} | "
        f"{data['registration_p99'].show()} |",
        "",
    ]
    p50, p99 = data["p50"].median, data["p99"].median
    targets.append(
        ("Commit-to-relay p50 <= 25 ms at 50 reg/s", f"{p50:.1f} ms", p50 <= 25)
    )
    targets.append(
        ("Commit-to-relay p99 <= 150 ms at 50 reg/s", f"{p99:.1f} ms", p99 <= 150)
    )
    return out
