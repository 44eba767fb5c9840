"""The throughput figure's batched floor runs on a real worker: its no-op tasks
are taken in batches (mailer.batching's Batcher), and each still ends with
its own SUCCESS result and its own ack."""

import re

import pytest
from django_celery_results.models import TaskResult

from bench.tasks import do_nothing_batched
from celery_app import app
from tests.conftest import worker_env
from tests.support import RedisServer, WorkerProcess, free_port, wait_until
from tests.support.redis import queue_length

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

TASKS = 120


@pytest.fixture
def broker():
    server = RedisServer(free_port()).start()
    yield server
    server.cleanup()


def test_the_batched_floor_settles_its_no_op_tasks_in_batches_each_with_a_result(
    broker, tmp_path
):
    with app.connection_for_write(broker.url) as connection:
        producer = app.amqp.Producer(connection)
        ids = [
            do_nothing_batched.apply_async(producer=producer).id for _ in range(TASKS)
        ]
    worker = WorkerProcess(
        env=worker_env(
            REDIS_URL=broker.url,
            DJANGO_SETTINGS_MODULE="bench.settings",
            MAILER_BATCH_SIZE="16",
        ),
        name="floor",
        concurrency=2,
        prefetch_multiplier=32,
        log_path=tmp_path / "worker.log",
    ).start()
    try:
        done = TaskResult.objects.filter(task_id__in=ids, status="SUCCESS")
        wait_until(lambda: done.count() == TASKS, timeout=60, what="every result")
        sizes = [int(n) for n in re.findall(r"batch of (\d+) send tasks", worker.log())]
        redis = broker.client()
        wait_until(lambda: redis.hlen("unacked") == 0, timeout=10, what="the acks")
    finally:
        worker.stop()

    assert sum(sizes) == TASKS and max(sizes) > 1, sizes
    assert set(done.values_list("task_name", flat=True)) == {do_nothing_batched.name}
    assert queue_length(redis) == 0
