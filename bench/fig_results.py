"""Figure: what storing one task's results costs, per database."""

import json
import subprocess
import sys

from bench.harness import Target, render, table_rows
from bench.processes import ROOT
from bench.stats import Runs

TEXT = """
## Result storage per task (django-celery-results)

bench/result_cost.py, $tasks simulated tasks per run: Celery's Django fixup
hooks, this project's connection receivers, and the result write each task
makes (SUCCESS; `task_track_started` is off, so no STARTED write). ms per task,
median (min-max) over runs. "stock" is django-celery-results' `django-db`
backend (`get_or_create()`: SELECT, BEGIN, INSERT, COMMIT); mailer/results.py
writes each state with one `INSERT ... ON CONFLICT (task_id) DO UPDATE`
("upsert"). "naive" opens a new connection per task (Celery's default).

| database | naive: connect per task, stock | reused, stock | project: reused, upsert |
| --- | --- | --- | --- |
$rows
"""


def run(bench) -> dict:
    targets = [("SQLite", f"sqlite:///{bench.stack.directory / 'results.sqlite3'}")]
    if bench.stack.database.vendor == "postgresql":
        targets.append(("PostgreSQL", bench.stack.database.url))
    tasks, out = bench.size(300, 100), {}
    for label, url in targets:
        argv = [
            sys.executable,
            "-m",
            "bench.result_cost",
            "--migrate",
            "--tasks",
            str(tasks),
            "--runs",
            str(bench.size(3, 3)),
        ]
        done = subprocess.run(
            argv,
            cwd=ROOT,
            env=bench.stack.env(DATABASE_URL=url),
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        data = json.loads(done.stdout.strip().splitlines()[-1])
        out[label] = {k: Runs(v) for k, v in data["ms_per_task"].items()}
    return {"rows": out, "tasks": tasks}


def section(data) -> tuple[str, list]:
    rows = [
        [label, *(r[k].show("{:.2f}") for k in ("naive", "reused", "project"))]
        for label, r in data["rows"].items()
    ]
    text = render(TEXT, tasks=data["tasks"], rows=table_rows(rows))
    name = "Result storage on PostgreSQL <= 0.5x the stock `django-db` writes"
    if "PostgreSQL" not in data["rows"]:
        return text, [
            Target(name, "not measured (DATABASE_URL is not PostgreSQL)", None)
        ]
    pg = data["rows"]["PostgreSQL"]
    ratio = pg["project"].median / pg["reused"].median
    return text, [
        Target(
            name,
            f"{ratio:.2f}x ({pg['project'].show('{:.2f}')} vs "
            f"{pg['reused'].show('{:.2f}')} ms)",
            ratio <= 0.5,
        )
    ]
