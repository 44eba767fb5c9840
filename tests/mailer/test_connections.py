import pytest
from celery import states
from celery.fixups.django import DjangoWorkerFixup
from celery.signals import task_postrun, task_prerun
from django.db import connection

from celery_app import app
from mailer.tasks import send_welcome_email

pytestmark = pytest.mark.django_db(transaction=True)


def run_task_signals(*, state: str) -> None:
    """Send what a worker sends around one task (not eager: a worker's request)."""
    task = send_welcome_email
    task_prerun.send(sender=task, task_id="t", task=task, args=(1,), kwargs={})
    connection.ensure_connection()  # the task's queries
    task_postrun.send(
        sender=task, task_id="t", task=task, args=(1,), kwargs={}, state=state
    )


def test_worker_keeps_its_database_connection_across_successful_tasks():
    connection.ensure_connection()
    opened = connection.connection

    run_task_signals(state=states.SUCCESS)
    run_task_signals(state=states.SUCCESS)

    assert connection.connection is opened


def test_worker_drops_its_database_connection_after_a_failed_task():
    connection.ensure_connection()

    run_task_signals(state=states.FAILURE)

    assert connection.connection is None


def test_celery_django_fixup_reuses_connections_instead_of_closing_per_task():
    assert DjangoWorkerFixup(app).db_reuse_max == 1000
