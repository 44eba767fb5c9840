"""Batched sends (MAILER_BATCH_SIZE): each mail still its own task, once.

A real worker with batching on drains a queued backlog on its own Redis:
every mail arrives once (by Message-ID), every task id has its own stored
result and its own task-received, task-started and task-succeeded events
(what Flower reads), and the mails did go out in batches. A mail that the
relay refuses or defers in the middle of a batch gets its own failed or
retried task, as on the per-mail path. A mail arriving alone is sent at
once.
"""

import json
import re
import threading
import time
from collections import Counter, defaultdict

import pytest
from django_celery_results.models import TaskResult

from celery_app import app
from mailer.lifeline import EPOCH_KEY
from mailer.models import Delivery
from mailer.outbox import create_welcome_delivery
from mailer.tasks import send_welcome_email, sweep_stale_deliveries
from tests.conftest import worker_env
from tests.factories import UserFactory
from tests.integration.test_flower import LOGIN, FlowerProcess
from tests.support import RedisServer, WorkerProcess, free_port, wait_until
from tests.support.redis import queue_length

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

BACKLOG = 200
BATCH_SIZE = 32


@pytest.fixture
def broker():
    """A Redis of the test's own, as the lifelines last saw it.

    A broker with no epoch key looks like one that lost its data: the first
    lifeline beat would publish every pending row again under a new task id
    (tests/faults cover that); here the queued backlog is all there is.
    """
    server = RedisServer(free_port()).start()
    server.client().set(EPOCH_KEY, "known")
    yield server
    server.cleanup()


class TaskEvents:
    """Every task event on the broker, by task id, read as Flower reads them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.by_task: dict[str, Counter] = defaultdict(Counter)
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.receiver = None
        self.thread = threading.Thread(target=self._capture, daemon=True)

    def start(self) -> "TaskEvents":
        self.thread.start()
        assert self.ready.wait(10), "event receiver not consuming"
        return self

    def _capture(self) -> None:
        with app.connection_for_read(self.url) as connection:
            self.receiver = app.events.Receiver(
                connection, handlers={"*": self._on_event}
            )
            self.ready.set()
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def _on_event(self, event: dict) -> None:
        if "uuid" in event:
            with self.lock:
                self.by_task[event["uuid"]][event["type"]] += 1

    def of(self, task_id: str) -> Counter:
        with self.lock:
            return Counter(self.by_task[task_id])

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.thread.join(5)


@pytest.fixture
def events(broker):
    captured = TaskEvents(broker.url).start()
    yield captured
    captured.stop()


@pytest.fixture
def batching_worker(broker, smtp_server, tmp_path):
    """A worker with batching on: 2 threads, each holding up to a batch."""
    worker = WorkerProcess(
        env=worker_env(REDIS_URL=broker.url, MAILER_BATCH_SIZE=str(BATCH_SIZE)),
        name="batching",
        concurrency=2,
        prefetch_multiplier=BATCH_SIZE,
        log_path=tmp_path / "worker.log",
    )
    yield worker
    worker.stop()


def queue_mails(broker, prefix: str, count: int) -> list[Delivery]:
    deliveries = [
        create_welcome_delivery(user=UserFactory(email=f"{prefix}{n}@example.com"))
        for n in range(count)
    ]
    with app.connection_for_write(broker.url) as connection:
        producer = app.amqp.Producer(connection)
        for delivery in deliveries:
            send_welcome_email.apply_async(
                args=(delivery.pk,), task_id=delivery.task_id, producer=producer
            )
    return deliveries


def batch_sizes(worker: WorkerProcess) -> list[int]:
    return [int(n) for n in re.findall(r"batch of (\d+) send tasks", worker.log())]


def all_settled(deliveries: list[Delivery], status: str = "sent") -> bool:
    ids = [d.pk for d in deliveries]
    return Delivery.objects.filter(pk__in=ids, status=status).count() == len(ids)


def test_a_backlog_is_sent_once_each_in_batches_with_a_result_and_events_per_task(
    broker, events, batching_worker, smtp
):
    deliveries = queue_mails(broker, "backlog", BACKLOG)
    batching_worker.start()
    wait_until(lambda: all_settled(deliveries), timeout=90, what="the backlog sent")
    wait_until(
        lambda: all(events.of(d.task_id)["task-succeeded"] for d in deliveries),
        timeout=10,
        what="a task-succeeded event per task",
    )
    time.sleep(1)  # let any duplicate surface

    sent_ids = Counter(m.message["Message-ID"] for m in smtp.received)
    expected = {
        d.message_id for d in Delivery.objects.filter(pk__in=[d.pk for d in deliveries])
    }
    assert set(sent_ids) == expected
    assert max(sent_ids.values()) == 1, sent_ids.most_common(3)
    assert len(smtp.received) == BACKLOG

    results = {
        r.task_id: r
        for r in TaskResult.objects.filter(task_id__in=[d.task_id for d in deliveries])
    }
    assert len(results) == BACKLOG
    for delivery in deliveries:
        result = results[delivery.task_id]
        assert (result.status, json.loads(result.result)) == ("SUCCESS", "sent")
        assert result.task_name == "mailer.tasks.send_welcome_email"
        assert result.worker.startswith("batching@")
        assert json.loads(result.task_args) == f"({delivery.pk},)"
        seen = events.of(delivery.task_id)
        assert seen["task-received"] == seen["task-started"] == 1, seen
        assert seen["task-succeeded"] == 1, seen
        assert not seen["task-failed"] and not seen["task-retried"], seen

    sizes = batch_sizes(batching_worker)
    assert sum(sizes) == BACKLOG
    assert max(sizes) > 1, sizes  # the backlog did go out in batches
    redis = broker.client()
    assert redis.hlen("unacked") == 0 and queue_length(redis) == 0


@pytest.fixture
def flower(broker):
    """Flower on the test's Redis, with its API behind a login."""
    flower = FlowerProcess(
        worker_env(REDIS_URL=broker.url, FLOWER_BASIC_AUTH=LOGIN)
    ).start()
    yield flower
    flower.stop()


def test_a_refused_and_a_deferred_mail_in_a_batch_get_their_own_task_states(
    broker, events, batching_worker, flower, smtp
):
    smtp.script.replies = {
        "mixed3@example.com": ["550 5.1.1 No such user"],
        "mixed5@example.com": ["451 4.3.0 Try again later"],
    }
    batching_worker.start()
    # Flower only sees events sent after it connected: probe until it does.
    with app.connection_for_write(broker.url) as connection:
        producer = app.amqp.Producer(connection)

        def sees_a_probe() -> bool:
            probe = sweep_stale_deliveries.apply_async(producer=producer)
            time.sleep(0.5)
            return probe.id in flower.tasks()

        wait_until(sees_a_probe, timeout=30, interval=0, what="Flower seeing tasks")
    deliveries = queue_mails(broker, "mixed", 10)
    refused, deferred = deliveries[3], deliveries[5]
    others = [d for d in deliveries if d not in (refused, deferred)]
    wait_until(
        lambda: all_settled(others + [deferred]) and all_settled([refused], "failed"),
        timeout=30,
        what="every mail settled",
    )
    wait_until(
        lambda: (
            events.of(deferred.task_id)["task-succeeded"]
            and events.of(refused.task_id)["task-failed"]
        ),
        timeout=10,
        what="the refused and deferred tasks' events",
    )

    assert len(smtp.mails_to(deferred.user.email)) == 1
    assert smtp.attempts[deferred.user.email] == 2  # retried once, then sent
    assert not smtp.mails_to(refused.user.email)
    assert max(batch_sizes(batching_worker)) > 1

    assert TaskResult.objects.get(task_id=refused.task_id).status == "FAILURE"
    assert TaskResult.objects.get(task_id=deferred.task_id).status == "SUCCESS"
    assert events.of(deferred.task_id)["task-retried"] == 1
    assert events.of(refused.task_id)["task-failed"] == 1
    row = Delivery.objects.get(pk=refused.pk)
    assert (row.smtp_code, row.retries) == (550, 0)
    assert Delivery.objects.get(pk=deferred.pk).retries == 1
    for delivery in others:
        assert len(smtp.mails_to(delivery.user.email)) == 1
        assert events.of(delivery.task_id)["task-succeeded"] == 1

    expected = {d.task_id: "SUCCESS" for d in deliveries} | {refused.task_id: "FAILURE"}

    def flower_states() -> dict:
        tasks = flower.tasks()
        return {t: tasks[t]["state"] for t in expected if t in tasks}

    wait_until(lambda: flower_states() == expected, timeout=10, what="Flower's states")


def test_a_mail_arriving_alone_is_sent_alone_at_once(
    broker, events, batching_worker, smtp
):
    batching_worker.start()
    for n in range(5):
        (delivery,) = queue_mails(broker, f"alone{n}-", 1)
        published = time.monotonic()
        wait_until(lambda d=delivery: all_settled([d]), timeout=10, what="sent")
        assert time.monotonic() - published < 0.5
        time.sleep(0.2)
    assert batch_sizes(batching_worker) == [1] * 5


def test_a_worker_killed_mid_batch_loses_no_mail_and_resends_only_unmarked_ones(
    broker, smtp, tmp_path
):
    """The duplicate window is the per-mail path's on a relay this slow.

    A batch marks its sent rows once the oldest went out MARK_EVERY (0.1 s)
    ago; the relay here takes 0.3 s a mail, so each is marked right after
    its 250, and a worker killed mid-batch leaves at most the mail each
    thread had in flight to be sent again after the lease.
    """
    smtp.script.delay = 0.3  # each mail held after the relay took its data
    env = worker_env(
        REDIS_URL=broker.url,
        MAILER_BATCH_SIZE="8",
        CELERY_VISIBILITY_TIMEOUT="6",
        MAILER_SEND_TIME_LIMIT="4",
    )
    victim = WorkerProcess(
        env=env,
        name="victim",
        concurrency=2,
        prefetch_multiplier=8,
        log_path=tmp_path / "victim.log",
    )
    deliveries = queue_mails(broker, "killed", 12)
    victim.start()
    wait_until(lambda: len(smtp.received) >= 7, timeout=30, what="7 mails taken")
    victim.kill()
    killed_at = time.monotonic()
    taken = {m.message["Message-ID"] for m in smtp.received}
    rows = Delivery.objects.filter(pk__in=[d.pk for d in deliveries])
    unmarked = {
        d.message_id for d in rows if d.message_id in taken and d.status != "sent"
    }
    claimed = rows.filter(status="sending").count()

    time.sleep(max(0.0, killed_at + 6.5 - time.monotonic()))  # visibility timeout
    survivor = WorkerProcess(
        env=env,
        name="survivor",
        concurrency=2,
        prefetch_multiplier=8,
        log_path=tmp_path / "survivor.log",
    ).start()
    try:
        wait_until(lambda: all_settled(deliveries), timeout=60, what="every mail sent")
        time.sleep(1)  # let any further copy surface
    finally:
        survivor.stop()

    copies = Counter(m.message["Message-ID"] for m in smtp.received)
    assert set(copies) == {d.message_id for d in rows}  # none lost
    twice = {mid for mid, n in copies.items() if n > 1}
    assert twice <= unmarked, (twice, unmarked)
    assert max(copies.values()) <= 2
    assert len(unmarked) <= 2  # one in flight per thread, as per mail
    print(
        f"killed mid-batch: {len(taken)} taken by the relay, {len(unmarked)} of them "
        f"unmarked, {claimed} rows left sending; sent twice: {len(twice)}"
    )
