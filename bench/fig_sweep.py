"""Figure: a sweep that finds nothing to do, on an outbox of 1,000,000 rows.

    DATABASE_URL=... python -m bench.fig_sweep --rows 1000000   (one database)

The child process bulk-loads users and outbox rows with one INSERT ... SELECT
each (generate_series on PostgreSQL, a recursive CTE on SQLite): all but 3 in
1,000 sent, the rest pending, sending (leases ahead) or failed. It then times
`mailer.sweeper.sweep_stale_deliveries()` and EXPLAINs every query one call
makes, whatever the indexes are named.
"""

import argparse
import json
import os
import subprocess
import sys
import time

from bench.harness import Target, render, table_rows
from bench.processes import ROOT
from bench.stats import Runs

TEXT = """
## A sweep that finds nothing to do

bench/fig_sweep.py in its own process and throwaway database per vendor:
$count outbox rows (one user each), all but 3 in 1,000 `sent`; 1 in 1,000 each
`pending` and `sending` with leases ahead, and `failed`; loaded in one INSERT
... SELECT per table, every column the model has (its default where the load
sets none; PostgreSQL without its per-row foreign-key triggers), then ANALYZE.
`mailer.sweeper.sweep_stale_deliveries()` called $calls times after 5 warm-up
calls, ms per call, median (min-max). The plans are of the queries
one call makes (EXPLAIN on PostgreSQL, EXPLAIN QUERY PLAN on SQLite).

| database | ms per sweep | load | index in every plan |
| --- | --- | --- | --- |
$rows

$plans
"""
SERIES = {
    "postgresql": "SELECT n FROM generate_series(1, %s) AS n",
    "sqlite": "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s "
    "WHERE n < %s) SELECT n FROM s",
}
STATUS = "CASE n %% 1000 WHEN 0 THEN 'pending' WHEN 1 THEN 'sending' "
STATUS += "WHEN 2 THEN 'failed' ELSE 'sent' END"


def load(rows: int) -> None:
    """Users 1..rows and one welcome row each, in two statements."""
    from datetime import timedelta

    from django.db import connection, transaction
    from django.utils import timezone

    from mailer.models import Delivery
    from users.models import User

    now = timezone.now()
    series = SERIES[connection.vendor]
    lease = "CASE WHEN n %% 1000 < 2 THEN %s ELSE %s END"  # ahead: not yet due
    users = {
        "id": ("n", []),
        "password": ("'!'", []),
        "email": ("'sweep' || n || '@bench.example'", []),
        "is_active": ("%s", [True]),
        "date_joined": ("%s", [now]),
    }
    deliveries = {
        "id": ("n", []),
        "user_id": ("n", []),
        "kind": ("'welcome'", []),
        "status": (STATUS, []),
        "attempts": ("1", []),
        "task_id": ("'t' || n", []),
        "message_id": ("'<' || n || '@bench>'", []),
        "lease_expires_at": (
            lease,
            [now + timedelta(minutes=5), now - timedelta(days=1)],
        ),
        "created_at": ("%s", [now]),
        "updated_at": ("%s", [now]),
    }
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":  # no deferred FK check per row
            cursor.execute("SET LOCAL session_replication_role = replica")
        for model, given in ((User, users), (Delivery, deliveries)):
            sql, params = insert_select(model, given, series, connection)
            cursor.execute(sql, [*params, rows])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def insert_select(model, given: dict, series: str, connection) -> tuple[str, list]:
    """Return one INSERT ... SELECT of `model` over `series`.

    The `given` columns get their SQL expressions, every other column the
    field's default as Django would save it, so a new column needs no edit here.
    """
    columns, values, params = [], [], []
    for field in model._meta.concrete_fields:
        columns.append(connection.ops.quote_name(field.column))
        if field.column in given:
            expression, args = given.pop(field.column)
        else:
            default = field.get_default()  # "" for text without one, as Django saves
            if default is None and not field.null:
                raise ValueError(f"{model.__name__}.{field.name}: no default given")
            expression = "%s"
            args = [field.get_db_prep_save(default, connection=connection)]
        values.append(expression)
        params.extend(args)
    if given:
        raise ValueError(f"{model.__name__} has no column {', '.join(given)}")
    sql = (
        f"INSERT INTO {connection.ops.quote_name(model._meta.db_table)} "
        f"({', '.join(columns)}) SELECT {', '.join(values)} FROM ({series}) AS numbers"
    )
    return sql, params


def child(rows: int, calls: int) -> dict:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from mailer.sweeper import sweep_stale_deliveries

    call_command("migrate", verbosity=0)
    clock = time.perf_counter()
    load(rows)
    loaded = time.perf_counter() - clock
    for _ in range(5):
        sweep_stale_deliveries()
    samples = []
    for _ in range(calls):
        clock = time.perf_counter()
        report = sweep_stale_deliveries()
        samples.append((time.perf_counter() - clock) * 1000)
        assert not (report.reclaimed or report.redispatched), report  # nothing to do
    with CaptureQueriesContext(connection) as captured:
        sweep_stale_deliveries()
    explain = "EXPLAIN" if connection.vendor == "postgresql" else "EXPLAIN QUERY PLAN"
    plans = []
    with connection.cursor() as cursor:
        for query in captured.captured_queries:
            if query["sql"].split()[0].upper() in ("SELECT", "UPDATE"):
                cursor.execute(f"{explain} {query['sql']}")
                lines = [" ".join(map(str, row[-1:])) for row in cursor.fetchall()]
                plans.append({"sql": query["sql"], "plan": lines})
    return {
        "ms": samples,
        "load_s": loaded,
        "plans": plans,
        "vendor": connection.vendor,
    }


def uses_index(plan: list[str]) -> bool:
    text = " ".join(plan)
    return "Index" in text or "USING INDEX" in text or "USING COVERING INDEX" in text


def run(bench) -> dict:
    rows, out = bench.size(1_000_000, 100_000), {}
    urls = {"SQLite": f"sqlite:///{bench.stack.directory / 'sweep.sqlite3'}"}
    if bench.stack.database.vendor == "postgresql":
        urls["PostgreSQL"] = bench.stack.database.sibling("sweep")
    for label, url in urls.items():
        argv = [sys.executable, "-m", "bench.fig_sweep", "--rows", str(rows)]
        argv += ["--calls", str(bench.size(30, 10))]
        done = subprocess.run(
            argv,
            cwd=ROOT,
            env=bench.stack.env(DATABASE_URL=url),
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode:
            raise RuntimeError(f"sweep figure on {label}:\n{done.stderr[-3000:]}")
        out[label] = json.loads(done.stdout.strip().splitlines()[-1])
    return {"rows": rows, "runs": out, "calls": bench.size(30, 10)}


def section(data) -> tuple[str, list]:
    lines, plans, targets = [], [], []
    for label, result in data["runs"].items():
        ms = Runs(result["ms"])
        indexed = all(uses_index(p["plan"]) for p in result["plans"])
        load = f"{result['load_s']:.0f} s"
        lines.append([label, ms.show("{:.2f}"), load, "yes" if indexed else "**no**"])
        plans.append(f"{label}:\n")
        for p in result["plans"]:
            plans += [
                f"    {p['sql'][:300]}",
                *(f"      -> {x}" for x in p["plan"]),
                "",
            ]
        targets.append(
            Target(
                f"Empty sweep, {data['rows']:,} rows, {label}: <= 5 ms, index used",
                f"{ms.median:.2f} ms, {'every query indexed' if indexed else 'a scan'}",
                ms.median <= 5 and indexed,
            )
        )
    text = render(
        TEXT,
        count=f"{data['rows']:,}",
        calls=data["calls"],
        rows=table_rows(lines),
        plans="\n".join(plans),
    )
    return text, targets


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    print(json.dumps(child(args.rows, args.calls)))
