"""Per-mail costs the stages figure showed, before and after their trims.

    DJANGO_DEBUG=1 DATABASE_URL=<a throwaway database> python -m bench.trim_cost
        [--calls 2000] [--rounds 7]

In this process, interleaved round by round after a warm-up round:
- the suppression lookup each send attempt makes (1,000 addresses on the
  list, none of them the one looked up): the ORM's `exists()` as it was,
  against mailer.suppression.is_suppressed (SQL written once);
- Celery's INFO line after each task ("Task ...[id] succeeded in 0.1s:
  'sent'"), through the worker's logging (`--loglevel INFO`) into a file:
  logged as it was, against skipped (celery.app.trace at WARNING: Celery
  checks the level once, when the worker starts, so each task pays nothing).
Prints CPU µs per call, median (min-max) over the rounds.
"""

import argparse
import logging
import os
import tempfile
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    import django

    django.setup()
    from celery.app import trace
    from django.core.management import call_command
    from django.db import connection

    from bench.stats import Runs
    from celery_app import app
    from mailer import suppression
    from mailer.models import Suppression

    call_command("migrate", verbosity=0)
    tag = time.time_ns()
    Suppression.objects.bulk_create(
        Suppression(address=f"gone{tag}n{i}@bench.example", reason="manual")
        for i in range(1000)
    )
    log = tempfile.NamedTemporaryFile(suffix=".log")
    app.log.setup_logging_subsystem(loglevel="INFO", logfile=log.name)
    celery_trace = logging.getLogger("celery.app.trace")
    context = {"id": "0" * 36, "name": "mailer.tasks.send_welcome_email",
               "return_value": "'sent'", "runtime": 0.1, "args": "(1,)",
               "kwargs": "{}"}  # fmt: skip

    def orm_lookup() -> bool:
        key = suppression.normalize_address("ada@bench.example").lower()
        return suppression.suppressed_addresses().filter(key=key).exists()

    def sql_lookup() -> bool:
        return suppression.is_suppressed(address="ada@bench.example")

    def success_line() -> None:
        trace.info(trace.LOG_SUCCESS, context)

    ways = {
        "suppression lookup, ORM (before)": orm_lookup,
        "suppression lookup, SQL (after)": sql_lookup,
        "Celery's success line, logged (before)": success_line,
    }
    found = {name: [] for name in ways}
    for run in range(args.rounds + 1):  # the first is a warm-up
        for name, way in ways.items():
            celery_trace.setLevel(logging.INFO)
            cpu = time.process_time()
            for _ in range(args.calls):
                way()
            if run:
                found[name].append((time.process_time() - cpu) * 1e6 / args.calls)
    print(f"{connection.vendor}, {args.calls} calls x {args.rounds} rounds, µs/call:")
    for name, values in found.items():
        print(f"  {name:40} {Runs(values).show('{:.0f}')}")
    print("  Celery's success line, skipped (after)   not called")


if __name__ == "__main__":
    main()
