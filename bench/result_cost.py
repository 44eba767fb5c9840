"""Figure 4: what storing one task's results costs, per database.

    DATABASE_URL=... python -m bench.result_cost --tasks 300 --runs 5

Runs in its own process (one database per process). Per simulated task it
does what a worker does around a send: Celery's Django fixup's prerun and
postrun hooks, this project's connection receivers, and the one write
django-celery-results makes (SUCCESS, with result_extended; STARTED is not
stored, since task_track_started is off, as in Celery's defaults). "naive"
is Celery's default (the fixup closes every connection around each task)
with django-celery-results' own `django-db` backend; "reused" keeps the
connections (CELERY_DB_REUSE_MAX, CONN_MAX_AGE, CONN_HEALTH_CHECKS) but still
writes through `django-db`;
"project" is this project's settings: reused connections and
mailer.results' one-statement writes. Prints JSON.
"""

import argparse
import json
import os
import statistics
import time
import uuid

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")


class FakeRequest:
    """What a worker's task request carries into the result backend."""

    def __init__(self, task_id: str) -> None:
        self.id = task_id
        self.task = "mailer.tasks.send_welcome_email"
        self.args, self.kwargs = (1,), {}
        self.argsrepr, self.kwargsrepr = "(1,)", "{}"
        self.hostname = "bench@localhost"
        self.is_eager = False
        self.children = []


class FakeTask:
    def __init__(self, request: FakeRequest) -> None:
        self.request = request


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--migrate", action="store_true")
    args = parser.parse_args()

    import django

    from celery_app import app

    django.setup()
    from celery import states
    from celery.fixups.django import DjangoWorkerFixup
    from django.core.management import call_command
    from django.db import connection
    from django_celery_results.backends import DatabaseBackend

    from mailer import connections as project_hooks

    if args.migrate:
        call_command("migrate", verbosity=0)
    stock = DatabaseBackend(app=app)  # result_backend = "django-db"
    naive = DjangoWorkerFixup(app)
    naive.db_reuse_max = None  # Celery's default: close around every task
    project = DjangoWorkerFixup(app)  # CELERY_DB_REUSE_MAX from the settings
    setups = {
        "naive": (naive, False, stock),
        "reused": (project, True, stock),
        "project": (project, True, app.backend),
    }

    def one_task(fixup, hooks: bool, backend) -> float:
        request = FakeRequest(str(uuid.uuid4()))
        task = FakeTask(request)
        clock = time.perf_counter()
        fixup.on_task_prerun(sender=task)
        if hooks:
            project_hooks.close_unusable_connections(task=task)
        backend.store_result(request.id, "sent", states.SUCCESS, request=request)
        if hooks:
            project_hooks.release_connections(task=task, state=states.SUCCESS)
        fixup.on_task_postrun(sender=task)
        return time.perf_counter() - clock

    results = {name: [] for name in setups}
    for _ in range(20):  # warm-up: imports, first connection, plans
        for setup in setups.values():
            one_task(*setup)
    for _ in range(args.runs):  # interleaved, so drift hits each alike
        for name, setup in setups.items():
            samples = [one_task(*setup) for _ in range(args.tasks)]
            results[name].append(statistics.median(samples) * 1000)
    connection.close()
    print(json.dumps({"vendor": connection.vendor, "ms_per_task": results}))


if __name__ == "__main__":
    main()
