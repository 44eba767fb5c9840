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
  checks the level once, when the worker starts, so each task pays nothing);
- the relay budget's calls around each send (`reserve_send` before it,
  `note_accepted` after it) on a private redis-server: two script calls, as
  every send made them, against the quiet path (mailer/budget.py: nothing
  learned from the relay and no fixed rate, so a send asks Redis nothing).
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
    budget_cost(args)


def budget_cost(args) -> None:
    """The budget's calls per send, asking Redis and quiet, interleaved."""
    from django.conf import settings

    from bench.stats import Runs
    from mailer import budget
    from tests.support import RedisServer, free_port

    def asking() -> None:
        budget.forget()  # no renewal yet: each send asks

    def quiet() -> None:
        budget.forget()
        budget.renew_slots(holders=[])  # a reaper round that found nothing learned

    server = RedisServer(free_port()).start()
    settings.REDIS_URL = server.url
    try:
        ways = {"asking Redis (before)": asking, "quiet (after)": quiet}
        found = {name: [] for name in ways}
        for run in range(args.rounds + 1):  # the first is a warm-up
            for name, prepare in ways.items():
                prepare()
                cpu = time.process_time()
                for place in range(args.calls):
                    budget.reserve_send(max_wait=2, place=place)
                    budget.note_accepted()
                if run:
                    spent = time.process_time() - cpu
                    found[name].append(spent * 1e6 / args.calls)
    finally:
        budget.forget()
        server.cleanup()
    print("the relay budget around one send, µs/send:")
    for name, values in found.items():
        print(f"  {name:40} {Runs(values).show('{:.1f}')}")


if __name__ == "__main__":
    main()
