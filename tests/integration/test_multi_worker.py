"""Two workers on one Redis share the welcome mails; losing one loses no mail.

Each test runs its workers on a Redis of its own (the suite's session worker
would otherwise take a share) with a short visibility timeout, so Redis hands
a killed worker's unacknowledged messages to the next worker that starts:
kombu restores them on worker start, and on a running worker's periodic sweep.
A worker stopped with SIGTERM (warm shutdown) hands its reserved messages
back at once.
"""

import json
import time
import uuid

import pytest
from django_celery_results.models import TaskResult

from celery_app import app
from mailer.models import Delivery
from mailer.outbox import create_welcome_delivery
from mailer.tasks import send_welcome_email
from tests.conftest import worker_env
from tests.factories import UserFactory
from tests.support import (
    RedisServer,
    WorkerProcess,
    free_port,
    wait_for_delivery,
    wait_until,
)
from tests.support.redis import queue_length

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

VISIBILITY_TIMEOUT = 7
# Held by the workers (reserved, unacknowledged) until due; below the
# visibility timeout, as every countdown must be.
COUNTDOWN = 4
BATCH = 12


@pytest.fixture
def broker():
    server = RedisServer(free_port()).start()
    yield server
    server.cleanup()


@pytest.fixture
def start_worker(broker, smtp_server, tmp_path):
    """Start named workers on the module's broker; stop them all afterwards."""
    started: list[WorkerProcess] = []
    env = worker_env(
        REDIS_URL=broker.url,
        CELERY_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT),
        MAILER_SEND_TIME_LIMIT=str(VISIBILITY_TIMEOUT - 2),
    )

    def start(name: str, *, concurrency: int = 2) -> WorkerProcess:
        log = tmp_path / f"{name}-{len(started)}.log"
        worker = WorkerProcess(
            env=env, name=name, concurrency=concurrency, log_path=log
        )
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()


def queue_welcome_mails(broker, prefix: str, *, countdown: float = 0) -> list[Delivery]:
    """Create BATCH outbox rows and publish their tasks to `broker`."""
    deliveries = [
        create_welcome_delivery(user=UserFactory(email=f"{prefix}{n}@example.com"))
        for n in range(BATCH)
    ]
    with app.connection_for_write(broker.url) as connection:
        producer = app.amqp.Producer(connection)
        for delivery in deliveries:
            send_welcome_email.apply_async(
                args=(delivery.pk,),
                task_id=delivery.task_id,
                countdown=countdown,
                producer=producer,
            )
    return deliveries


def received_by(worker: WorkerProcess, deliveries: list[Delivery]) -> list[Delivery]:
    log = worker.log()
    return [d for d in deliveries if f"[{d.task_id}] received" in log]


def test_two_workers_share_the_mails_and_a_killed_one_loses_none(
    broker, start_worker, smtp
):
    alpha = start_worker("alpha")
    bravo = start_worker("bravo")

    first = queue_welcome_mails(broker, "first")
    for delivery in first:
        wait_for_delivery(email=delivery.user.email, status="sent", timeout=30)
    senders = set(
        TaskResult.objects.filter(
            task_id__in=[d.task_id for d in first], status="SUCCESS"
        ).values_list("worker", flat=True)
    )
    assert {name.split("@")[0] for name in senders} == {"alpha", "bravo"}

    # The workers reserve a batch due in COUNTDOWN seconds; the one holding
    # the larger share dies with it unacknowledged.
    published = time.monotonic()
    second = queue_welcome_mails(broker, "second", countdown=COUNTDOWN)
    redis = broker.client()
    wait_until(
        lambda: queue_length(redis) == 0 and redis.hlen("unacked") == BATCH,
        timeout=5,
        what="every message reserved by a worker",
    )
    victim = max((alpha, bravo), key=lambda worker: len(received_by(worker, second)))
    victim.kill()
    assert time.monotonic() - published < COUNTDOWN, "killed after the ETA"
    assert not Delivery.objects.filter(pk__in=[d.pk for d in second]).exclude(
        status="pending"
    )

    # The survivor sends its share when due; the victim's share waits in
    # Redis until the visibility timeout has passed and a worker (the victim,
    # restarted as a supervisor would) restores it.
    time.sleep(max(0.0, published + VISIBILITY_TIMEOUT + 0.5 - time.monotonic()))
    start_worker(victim.name)
    for delivery in second:
        wait_for_delivery(email=delivery.user.email, status="sent", timeout=40)

    time.sleep(1)  # let any duplicate delivery surface
    for delivery in first + second:
        assert len(smtp.mails_to(delivery.user.email)) == 1, delivery.user.email
    assert len(smtp.received) == 2 * BATCH
    assert redis.hlen("unacked") == 0


def test_a_worker_stopped_with_sigterm_finishes_its_sends_and_hands_back_the_rest(
    broker, start_worker, smtp
):
    smtp.script.delay = 1.5  # every send is in flight for a while
    alpha = start_worker("alpha")
    bravo = start_worker("bravo")
    deliveries = queue_welcome_mails(broker, "drain")
    redis = broker.client()
    wait_until(lambda: queue_length(redis) == 0, timeout=5, what="all reserved")
    # The one holding the larger share has messages waiting behind its sends.
    victim, survivor = sorted(
        (alpha, bravo), key=lambda worker: -len(received_by(worker, deliveries))
    )
    mine = [delivery.pk for delivery in received_by(victim, deliveries)]
    in_flight = wait_until(  # the outbox row shows an attempt in flight
        lambda: Delivery.objects.filter(pk__in=mine, status="sending").first(),
        timeout=10,
        what=f"{victim.name} sending",
    )

    process = victim.process
    victim.stop()  # SIGTERM: Celery's warm shutdown

    assert process.returncode == 0, victim.log()
    assert "Restoring" in victim.log()  # its reserved messages, back to Redis
    # Back at once, not after the visibility timeout and a restore sweep.
    for delivery in deliveries:
        wait_for_delivery(email=delivery.user.email, status="sent", timeout=30)
    finished = TaskResult.objects.get(task_id=in_flight.task_id)
    assert finished.status == "SUCCESS"
    assert finished.worker.startswith(f"{victim.name}@")
    assert survivor.process.poll() is None
    for delivery in deliveries:
        assert len(smtp.mails_to(delivery.user.email)) == 1, delivery.user.email


def test_copies_of_one_send_racing_on_two_workers_send_one_mail(
    broker, start_worker, smtp
):
    start_worker("alpha", concurrency=4)
    start_worker("bravo", concurrency=4)
    delivery = create_welcome_delivery(user=UserFactory(email="race@example.com"))
    copies = [str(uuid.uuid4()) for _ in range(8)]

    with app.connection_for_write(broker.url) as connection:
        producer = app.amqp.Producer(connection)
        for task_id in copies:
            send_welcome_email.apply_async(
                args=(delivery.pk,), task_id=task_id, producer=producer
            )
    results = wait_until(
        lambda: (
            (
                done := list(
                    TaskResult.objects.filter(task_id__in=copies, status="SUCCESS")
                )
            )
            and len(done) == len(copies)
            and done
        ),
        timeout=30,
        interval=0.2,
        what="every copy finished",
    )

    outcomes = sorted(json.loads(result.result) for result in results)
    assert outcomes == ["sent"] + ["skipped"] * (len(copies) - 1)
    assert {r.worker.split("@")[0] for r in results} == {"alpha", "bravo"}
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("sent", 1)
    assert len(smtp.mails_to("race@example.com")) == 1
