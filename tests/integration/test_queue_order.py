"""Queue order: a mail published again goes before the fresh ones.

After an outage or under throttling, mails come back to the queue (a retry,
a throttled turn, a rescue, a release, a rerun) while fresh ones keep coming.
Each returning mail goes before every fresh one (mailer.dispatch), so the
backlog goes out roughly in commit order.
"""

import pytest

from mailer.models import Delivery
from tests.conftest import worker_env
from tests.factories import DeliveryFactory
from tests.support import (
    RedisServer,
    WorkerProcess,
    free_port,
    run_manage,
    wait_for_delivery,
    wait_until,
)
from tests.support.redis import queue_length

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

FRESH = [f"fresh{n}@example.com" for n in range(6)]


@pytest.fixture
def private_redis():
    server = RedisServer(free_port()).start()
    yield server
    server.cleanup()


def test_a_rerun_goes_out_before_the_fresh_mails_queued_ahead_of_it(
    private_redis, smtp
):
    env = worker_env(REDIS_URL=private_redis.url)
    registrations = "; ".join(
        f"register_user(email={email!r}, password='correct horse battery staple')"
        for email in FRESH
    )
    result = run_manage(
        "shell",
        "-c",
        f"from users.services import register_user; {registrations}",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    DeliveryFactory(
        user__email="waited@example.com", status=Delivery.Status.FAILED, smtp_code=421
    )
    result = run_manage("resend_failed", env=env)  # published after the fresh ones
    assert result.returncode == 0, result.stderr
    assert queue_length(private_redis.client()) == len(FRESH) + 1

    worker = WorkerProcess(env=env, name="order", concurrency=1, prefetch_multiplier=1)
    worker.start()
    try:
        for email in ["waited@example.com", *FRESH]:
            wait_for_delivery(email=email, status="sent", timeout=30)
        wait_until(lambda: len(smtp.received) == len(FRESH) + 1, timeout=5)
    finally:
        worker.stop()

    order = [mail.rcpt_tos[0] for mail in smtp.received]
    assert order[0] == "waited@example.com"
    assert sorted(order[1:]) == sorted(FRESH)
