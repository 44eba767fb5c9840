"""The sweeper: outbox rows whose dispatch was lost are sent, once."""

from datetime import timedelta

import pytest
from django.utils import timezone

from mailer.models import Delivery
from mailer.sweeper import sweep_stale_deliveries
from tests.conftest import worker_env
from tests.factories import DeliveryFactory
from tests.support import (
    BeatProcess,
    RedisServer,
    WorkerProcess,
    free_port,
    run_manage,
    wait_for_delivery,
    wait_until,
)
from tests.support.redis import queue_length

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_a_sweep_redispatches_a_stale_pending_row_once_and_it_is_sent_once(
    celery_worker, smtp
):
    delivery = DeliveryFactory(
        user__email="lost@example.com",
        lease_expires_at=timezone.now() - timedelta(seconds=1),
    )

    first = sweep_stale_deliveries()
    second = sweep_stale_deliveries()

    assert first.redispatched == [delivery.pk]
    assert second.redispatched == []
    swept = Delivery.objects.get(pk=delivery.pk)
    assert swept.task_id != delivery.task_id
    wait_for_delivery(email="lost@example.com", status="sent")
    wait_until(lambda: smtp.mails_to("lost@example.com"), timeout=5, what="mail")
    assert len(smtp.mails_to("lost@example.com")) == 1
    assert Delivery.objects.get(pk=delivery.pk).task_id == swept.task_id


def test_a_sweep_hands_a_dead_attempts_row_back_and_it_is_sent_once(
    celery_worker, smtp
):
    delivery = DeliveryFactory(
        user__email="killed@example.com",
        status=Delivery.Status.SENDING,
        attempts=1,
        lease_expires_at=timezone.now() - timedelta(seconds=1),
    )

    report = sweep_stale_deliveries()

    assert report.reclaimed == 1
    assert report.redispatched == [delivery.pk]
    sent = wait_for_delivery(email="killed@example.com", status="sent")
    assert sent.attempts == 2
    assert len(smtp.mails_to("killed@example.com")) == 1


def register_in_a_process(email: str, env: dict[str, str]) -> None:
    """Register one person from a separate Django process using `env`."""
    code = (
        "from users.services import register_user; "
        f"register_user(email={email!r}, password='correct horse battery staple')"
    )
    result = run_manage("shell", "-c", code, env=env)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def private_redis():
    """A redis-server of this test's own, so stopping it disturbs no one."""
    server = RedisServer(free_port())
    yield server
    server.cleanup()


def test_a_registration_committed_while_redis_was_down_is_swept_and_sent_once(
    private_redis, smtp
):
    env = worker_env(
        REDIS_URL=private_redis.url,
        MAILER_STALE_AFTER="2",
        MAILER_SWEEP_INTERVAL="1",
    )

    register_in_a_process("outage@example.com", env)  # no Redis: dispatch fails

    delivery = Delivery.objects.get(user__email="outage@example.com")
    assert delivery.status == Delivery.Status.PENDING
    private_redis.start()
    worker = WorkerProcess(env=env, name="sweeper").start()
    beat = BeatProcess(env=env).start()
    try:
        wait_for_delivery(email="outage@example.com", status="sent", timeout=30)
        wait_until(lambda: smtp.mails_to("outage@example.com"), timeout=5, what="mail")
        # Several more sweeps: the sent row is never dispatched again.
        wait_until(
            lambda: beat.log().count("mailer.tasks.sweep_stale_deliveries") >= 5,
            timeout=20,
            what="more sweeps",
        )
    finally:
        beat.cleanup()
        worker.stop()
    assert len(smtp.mails_to("outage@example.com")) == 1
    assert smtp.attempts["outage@example.com"] == 1
    assert "redispatched=1" in worker.log()
    assert f"delivery={delivery.pk} " in worker.log()


def test_a_message_lost_in_a_redis_restart_is_swept_and_sent_once(private_redis, smtp):
    env = worker_env(
        REDIS_URL=private_redis.url,
        MAILER_STALE_AFTER="2",
        MAILER_SWEEP_INTERVAL="1",
    )
    private_redis.start()

    register_in_a_process("restart@example.com", env)  # published, no worker yet
    assert queue_length(private_redis.client()) == 1
    private_redis.stop()  # no persistence: the queued message is gone
    private_redis.start()
    assert queue_length(private_redis.client()) == 0

    worker = WorkerProcess(env=env, name="sweeper").start()
    beat = BeatProcess(env=env).start()
    try:
        wait_for_delivery(email="restart@example.com", status="sent", timeout=30)
        wait_until(
            lambda: beat.log().count("mailer.tasks.sweep_stale_deliveries") >= 4,
            timeout=20,
            what="more sweeps",
        )
    finally:
        beat.cleanup()
        worker.stop()
    assert len(smtp.mails_to("restart@example.com")) == 1


def test_a_sweep_that_cannot_publish_leaves_the_row_due_as_it_was(private_redis):
    due = timezone.now() - timedelta(seconds=5)
    delivery = DeliveryFactory(user__email="later@example.com", lease_expires_at=due)
    env = worker_env(REDIS_URL=private_redis.url)  # never started: nothing listens
    code = (
        "from mailer.sweeper import sweep_stale_deliveries; "
        "print(sweep_stale_deliveries())"
    )

    result = run_manage("shell", "-c", code, env=env)

    assert f"not_published=[{delivery.pk}]" in result.stdout, result.stderr
    assert "Sweep could not publish 1 deliveries" in result.stderr
    unchanged = Delivery.objects.get(pk=delivery.pk)
    assert (unchanged.status, unchanged.task_id) == ("pending", delivery.task_id)
    assert unchanged.lease_expires_at == due
