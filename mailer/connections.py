"""Database connections in the worker: kept across tasks, dropped when unsafe.

Celery's Django fixup closes every connection around each task, so each task
paid for a new PostgreSQL connection (about 5 ms here). With
`CELERY_DB_REUSE_MAX` set the fixup only recycles them every N tasks, and
these receivers give the worker Django's own per-request hygiene instead: a
connection that saw an error or outlived `CONN_MAX_AGE` is closed, and
`CONN_HEALTH_CHECKS` pings a reused one before its first query. After a task
that did not succeed every connection is closed, because an interrupted
query can leave one that looks usable and is not (Django ticket #30646).
"""

from celery import states
from celery.signals import task_postrun, task_prerun
from django.db import close_old_connections, connections


@task_prerun.connect(dispatch_uid="mailer.connections.before_task")
def close_unusable_connections(*, task=None, **kwargs) -> None:
    """Drop connections that errored or aged out before the task runs."""
    if not _is_eager(task):
        close_old_connections()


@task_postrun.connect(dispatch_uid="mailer.connections.after_task")
def release_connections(*, task=None, state=None, **kwargs) -> None:
    """Keep healthy connections after a success; close all after anything else."""
    if _is_eager(task):
        return  # Task.apply() runs inside the caller's transaction
    if state == states.SUCCESS:
        close_old_connections()
    else:
        connections.close_all()


def _is_eager(task) -> bool:
    return task is None or getattr(task.request, "is_eager", False)
