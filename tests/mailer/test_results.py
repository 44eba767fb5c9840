import uuid

import pytest
from celery import states
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_celery_results.backends import DatabaseBackend as StockDatabaseBackend
from django_celery_results.models import TaskResult

from celery_app import app
from mailer import result_backend, results

pytestmark = pytest.mark.django_db

# Fields whose values both backends must write alike; ids and clocks differ.
COMPARED = [
    "status",
    "result",
    "traceback",
    "meta",
    "content_type",
    "content_encoding",
    "periodic_task_name",
    "task_name",
    "task_args",
    "task_kwargs",
    "worker",
]


class Request:
    """What a worker's task request carries into the result backend."""

    def __init__(self, task_id: str) -> None:
        self.id = task_id
        self.task = "mailer.tasks.send_welcome_email"
        self.args, self.kwargs = [7], {}
        self.argsrepr, self.kwargsrepr = "(7,)", "{}"
        self.hostname = "w1@example"
        self.is_eager = False
        self.children = []


def store_lifecycle(backend, task_id: str) -> None:
    """A send that fails once, is retried, then succeeds."""
    request = Request(task_id)
    backend.store_result(task_id, None, states.STARTED, request=request)
    backend.store_result(
        task_id,
        ConnectionError("421 try later"),
        states.RETRY,
        traceback="Traceback: 421",
        request=request,
    )
    backend.store_result(task_id, None, states.STARTED, request=request)
    backend.store_result(task_id, "sent", states.SUCCESS, request=request)


def row(task_id: str) -> dict:
    return TaskResult.objects.values().get(task_id=task_id)


def test_the_configured_backend_writes_through_the_upsert_manager():
    assert isinstance(app.backend, result_backend.DatabaseBackend)
    manager = app.backend.TaskModel._default_manager
    assert isinstance(manager, results.UpsertTaskResultManager)
    assert app.backend.TaskModel._meta.db_table == TaskResult._meta.db_table


def test_each_state_is_stored_in_one_statement():
    task_id = str(uuid.uuid4())
    request = Request(task_id)

    for state, value in ((states.STARTED, None), (states.SUCCESS, "sent")):
        with CaptureQueriesContext(connection) as queries:
            app.backend.store_result(task_id, value, state, request=request)
        assert len(queries) == 1, [q["sql"] for q in queries]
        assert "ON CONFLICT" in queries[0]["sql"]

    assert row(task_id)["status"] == states.SUCCESS


def test_rows_match_what_django_celery_results_writes():
    ours, stock = str(uuid.uuid4()), str(uuid.uuid4())

    store_lifecycle(app.backend, ours)
    store_lifecycle(StockDatabaseBackend(app=app), stock)

    mine, theirs = row(ours), row(stock)
    assert {f: mine[f] for f in COMPARED} == {f: theirs[f] for f in COMPARED}
    assert mine["status"] == states.SUCCESS and mine["result"] == '"sent"'
    assert app.backend.get_task_meta(ours)["result"] == "sent"


def test_success_keeps_start_and_creation_times_and_moves_done():
    task_id = str(uuid.uuid4())
    request = Request(task_id)
    app.backend.store_result(task_id, None, states.STARTED, request=request)
    started = row(task_id)

    app.backend.store_result(task_id, "sent", states.SUCCESS, request=request)
    done = row(task_id)

    assert started["date_started"] is not None
    assert done["date_started"] == started["date_started"]
    assert done["date_created"] == started["date_created"]
    assert done["date_done"] >= started["date_done"]
    assert done["id"] == started["id"]


def test_a_failure_is_stored_with_its_exception_and_traceback():
    task_id = str(uuid.uuid4())
    request = Request(task_id)

    app.backend.store_result(
        task_id,
        OSError("550 mailbox unavailable"),
        states.FAILURE,
        traceback="Traceback: 550",
        request=request,
    )

    stored = row(task_id)
    assert stored["status"] == states.FAILURE
    assert stored["traceback"] == "Traceback: 550"
    assert "550 mailbox unavailable" in stored["result"]
    assert stored["date_started"] is None


def test_other_databases_fall_back_to_the_stock_writes(monkeypatch):
    monkeypatch.setattr(results, "UPSERT_VENDORS", frozenset())
    task_id = str(uuid.uuid4())
    request = Request(task_id)

    with CaptureQueriesContext(connection) as queries:
        app.backend.store_result(task_id, None, states.STARTED, request=request)
        app.backend.store_result(task_id, "sent", states.SUCCESS, request=request)

    assert not any("ON CONFLICT" in q["sql"] for q in queries)
    assert row(task_id)["status"] == states.SUCCESS
