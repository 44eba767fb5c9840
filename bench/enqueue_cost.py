"""The registration's mail path in-process: where each millisecond goes.

    DJANGO_DEBUG=1 DATABASE_URL=<a throwaway database> REDIS_URL=<a throwaway
    Redis> python -m bench.enqueue_cost [--mails 1000] [--rounds 5]

Migrates the database, bulk-creates users, then per mail runs what
`user_registered` does inside a registration's transaction
(mailer.receivers.queue_welcome_email: the outbox row, the on_commit hook)
and commits, which publishes the send task (mailer.dispatch). Prints CPU and
wall ms per mail, median (min-max) over rounds after a warm-up round, for the
whole path and each stage: the row, the commit, the publish.
"""

import argparse
import os
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
STAGES = ("row", "commit", "publish")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mails", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction

    from bench.stats import Runs
    from mailer import receivers
    from users.models import User

    call_command("migrate", verbosity=0)
    spent = dict.fromkeys(("all", *STAGES), (0.0, 0.0))

    def add(stage, cpu, wall):
        spent[stage] = (spent[stage][0] + cpu, spent[stage][1] + wall)

    def timed(stage, func, *call_args, **kwargs):
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            return func(*call_args, **kwargs)
        finally:
            add(stage, time.process_time() - cpu, time.perf_counter() - wall)

    publish = receivers.dispatch_after_commit
    receivers.dispatch_after_commit = lambda *a, **k: timed("publish", publish, *a, **k)
    results = {stage: ([], []) for stage in spent}
    tag = f"e{time.time_ns()}"
    for run in range(args.rounds + 1):  # the first is a warm-up
        users = User.objects.bulk_create(
            User(email=f"{tag}r{run}n{i}@bench.example", password="!")
            for i in range(args.mails)
        )
        spent.update(dict.fromkeys(spent, (0.0, 0.0)))
        for user in users:
            cpu, wall = time.process_time(), time.perf_counter()
            with transaction.atomic():
                timed("row", receivers.queue_welcome_email, sender=User, user=user)
                row_cpu, row_wall = time.process_time(), time.perf_counter()
            add("commit", time.process_time() - row_cpu, time.perf_counter() - row_wall)
            add("all", time.process_time() - cpu, time.perf_counter() - wall)
        spent["commit"] = tuple(
            c - p for c, p in zip(spent["commit"], spent["publish"], strict=True)
        )
        for stage, (cpu, wall) in spent.items() if run else ():
            results[stage][0].append(cpu * 1000 / args.mails)
            results[stage][1].append(wall * 1000 / args.mails)
    print(f"{connection.vendor}, {args.mails} mails x {args.rounds} rounds, ms/mail:")
    for stage, (cpu, wall) in results.items():
        cpu, wall = Runs(cpu).show("{:.3f}"), Runs(wall).show("{:.3f}")
        print(f"  {stage:8} CPU {cpu}  wall {wall}")


if __name__ == "__main__":
    main()
