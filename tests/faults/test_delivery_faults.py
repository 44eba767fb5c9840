"""Delivery faults: duplicate messages, racing workers, rolled-back registrations."""

import contextlib
import sqlite3
import time
import uuid
from datetime import timedelta

import psycopg
import pytest
from django.db import connection, transaction
from django.utils import timezone

from celery_app import app
from mailer.models import Delivery
from mailer.tasks import send_welcome_email
from tests.factories import DeliveryFactory
from tests.support import wait_for_delivery, wait_until
from tests.support.redis import queue_length
from users.models import User
from users.services import register_user

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]


def test_one_message_delivered_six_times_to_two_racing_workers_sends_one_mail(
    fault_stack, record
):
    smtp = fault_stack.start_smtp().handler
    fault_stack.start_worker("racer", concurrency=4)
    fault_stack.start_worker("racer", concurrency=4)
    email = "race@example.com"
    delivery = DeliveryFactory(user__email=email)
    task_id = str(uuid.uuid4())

    with app.connection_for_write(fault_stack.redis.url) as connection:
        for _ in range(6):  # a redelivered message is the same id, same body
            send_welcome_email.apply_async(
                args=(delivery.pk,), task_id=task_id, connection=connection
            )

    wait_for_delivery(email=email, status="sent")
    wait_until(lambda: not fault_stack.queued_tasks(), timeout=20, what="queue drained")
    skipped = sum(w.log().count("outcome=skipped") for w in fault_stack.workers)
    ran_on = [w.name for w in fault_stack.workers if "outcome=" in w.log()]

    assert len(smtp.mails_to(email)) == 1
    assert skipped == 5
    assert Delivery.objects.get(pk=delivery.pk).attempts == 1
    record(
        scenario="8. one task message delivered 6 times, two workers racing",
        happened=f"workers {', '.join(ran_on)} ran the 6 copies; one claimed the "
        f"row, {skipped} skipped",
        expected=1,
        arrived=len(smtp.mails_to(email)),
        duplicates=len(smtp.mails_to(email)) - 1,
    )


def test_rolled_back_registration_leaves_no_row_no_task_and_no_mail(
    celery_worker, smtp, redis_server, record
):
    email = "rollback@example.com"
    received_before = celery_worker.log().count(" received")

    with pytest.raises(RuntimeError), transaction.atomic():
        register_user(email=email, password="correct horse battery staple")
        assert Delivery.objects.filter(user__email=email).exists()  # signal fired
        raise RuntimeError("the request failed after the signal fired")

    # Let a wrongly published task reach the worker and the relay.
    time.sleep(2)
    client = redis_server.client()
    assert not User.objects.filter(email=email).exists()
    assert not Delivery.objects.exists()
    # The session worker drains the queue, so count what it received too.
    assert celery_worker.log().count(" received") == received_before
    assert queue_length(client) == 0 and client.hlen("unacked") == 0
    assert smtp.mails_to(email) == []
    record(
        scenario="9. registration rolled back after the signal fired",
        happened="no user, no outbox row, nothing published to Redis",
        expected=0,
        arrived=len(smtp.mails_to(email)),
        duplicates=0,
    )


@contextlib.contextmanager
def database_locked():
    """Hold an exclusive write lock on the outbox, as an outage would."""
    conf = connection.settings_dict
    if conf["ENGINE"] == "django.db.backends.sqlite3":
        locker = sqlite3.connect(conf["NAME"], isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
    else:
        locker = psycopg.connect(
            host=conf["HOST"] or "127.0.0.1",
            port=conf["PORT"] or 5432,
            user=conf["USER"],
            password=conf["PASSWORD"],
            dbname=conf["NAME"],
        )
        locker.execute("LOCK TABLE mailer_delivery IN ACCESS EXCLUSIVE MODE")
    try:
        yield
    finally:
        locker.rollback()
        locker.close()


def impatient_database_url(url: str) -> str:
    """The worker's database URL with a short lock wait (1 s)."""
    if url.startswith("sqlite"):
        return f"{url}?timeout=1"
    return f"{url}?options=-c%20lock_timeout%3D1000"


def test_database_outage_in_the_worker_is_retried_and_nothing_is_marked_unsent(
    fault_stack, record
):
    smtp = fault_stack.start_smtp().handler
    fault_stack.env["DATABASE_URL"] = impatient_database_url(
        fault_stack.env["DATABASE_URL"]
    )
    email = "dbdown@example.com"
    # Dispatched by hand below: not yet due for a rescue by the new worker.
    delivery = DeliveryFactory(
        user__email=email, lease_expires_at=timezone.now() + timedelta(minutes=5)
    )
    worker = fault_stack.start_worker()
    fault_stack.start_beat()

    with database_locked():
        with app.connection_for_write(fault_stack.redis.url) as broker:
            send_welcome_email.apply_async(
                args=(delivery.pk,), task_id=delivery.task_id, connection=broker
            )
        time.sleep(6)  # the outage
        assert smtp.received == []
    retries = worker.log().count("outcome=database-retry")

    wait_for_delivery(email=email, status="sent")
    assert len(smtp.mails_to(email)) == 1
    assert Delivery.objects.get(pk=delivery.pk).attempts == 1
    record(
        scenario="10. database unavailable in the worker for 6 s",
        happened=f"nothing sent or marked while it was down ({retries} task retries "
        "on a database error; on SQLite the result store fails first and the "
        "sweeper re-dispatched the row); sent once it returned",
        expected=1,
        arrived=len(smtp.mails_to(email)),
        duplicates=len(smtp.mails_to(email)) - 1,
    )
