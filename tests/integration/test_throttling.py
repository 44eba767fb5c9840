"""A relay that throttles sets the pace: every mail once, no retry spent, none parked.

Two real workers (threads) on a Redis of their own share the relay's budget
through it; the suite's SMTP server plays a relay that caps connections per
client (421 at the greeting, as Postfix's anvil) or mails per second (454
"Throttling failure" at MAIL FROM, as SES).
"""

import time

import pytest

from celery_app import app
from mailer.models import Delivery, RelayState
from mailer.outbox import create_welcome_delivery
from mailer.tasks import send_welcome_email
from tests.conftest import worker_env
from tests.factories import UserFactory
from tests.support import RedisServer, WorkerProcess, free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

BURST = 60
THREADS = 8  # per worker; two workers: more threads than the relay allows


@pytest.fixture
def broker():
    server = RedisServer(free_port()).start()
    yield server
    server.cleanup()


@pytest.fixture
def workers(broker, smtp_server, tmp_path):
    """Two workers with the shipped relay budget, sharing `broker`."""
    env = worker_env(REDIS_URL=broker.url)
    started = [
        WorkerProcess(
            env=env,
            name=name,
            concurrency=THREADS,
            log_path=tmp_path / f"{name}.log",
        ).start()
        for name in ("alpha", "bravo")
    ]
    yield started
    for worker in started:
        worker.stop()


def send_burst(
    broker, prefix: str, *, count: int = BURST
) -> tuple[list[Delivery], float]:
    """Commit `count` outbox rows and publish their tasks at once; when it was."""
    deliveries = [
        create_welcome_delivery(user=UserFactory(email=f"{prefix}{n}@example.com"))
        for n in range(count)
    ]
    started = time.monotonic()
    with app.connection_for_write(broker.url) as connection:
        producer = app.amqp.Producer(connection)
        for delivery in deliveries:
            send_welcome_email.apply_async(
                args=(delivery.pk,), task_id=delivery.task_id, producer=producer
            )
    return deliveries, started


def wait_all_sent(deliveries: list[Delivery], *, timeout: float) -> None:
    ids = [d.pk for d in deliveries]
    wait_until(
        lambda: Delivery.objects.filter(pk__in=ids, status="sent").count() == len(ids),
        timeout=timeout,
        what=f"{len(ids)} mails sent",
    )


def print_budget_changes(workers) -> None:
    """The workers' throttle and learned-limit lines: shown when a test fails."""
    for worker in workers:
        for line in worker.log().splitlines():
            if "relay budget" in line or "relay throttling" in line:
                print(f"{worker.name}: {line[:160]}")


def assert_each_once_no_retry_none_parked(smtp, deliveries) -> None:
    time.sleep(1)  # let any duplicate surface
    for delivery in deliveries:
        assert len(smtp.mails_to(delivery.user.email)) == 1, delivery.user.email
    rows = Delivery.objects.filter(pk__in=[d.pk for d in deliveries])
    assert set(rows.values_list("status", "retries")) == {("sent", 0)}
    assert not RelayState.objects.filter(down_since__isnull=False).exists()
    assert not RelayState.objects.filter(outages__gt=0).exists()


def test_a_connection_cap_below_the_thread_count_delivers_a_burst_at_its_pace(
    broker, workers, smtp
):
    smtp.script.max_connections = 3

    deliveries, started = send_burst(broker, "cap")
    wait_all_sent(deliveries, timeout=60)
    elapsed = time.monotonic() - started

    assert_each_once_no_retry_none_parked(smtp, deliveries)
    assert smtp.most_sessions_open <= 8  # the budget's default cap, then learned
    print(
        f"\nconnection cap 3: {BURST} mails in {elapsed:.1f} s, "
        f"{smtp.refused_connections} connections refused"
    )
    assert elapsed < 20


def test_a_rate_limit_answered_with_throttling_failures_delivers_a_burst_at_its_pace(
    broker, workers, smtp
):
    smtp.script.rate = 10  # per second, then 454 at MAIL FROM

    deliveries, started = send_burst(broker, "rate")
    wait_all_sent(deliveries, timeout=90)
    elapsed = time.monotonic() - started

    assert_each_once_no_retry_none_parked(smtp, deliveries)
    assert smtp.refused_mails > 0  # the relay did throttle
    floor = BURST / smtp.script.rate  # the relay's own rate
    print(
        f"\nrate 10/s: {BURST} mails in {elapsed:.1f} s (the relay's floor "
        f"{floor:.0f} s), {smtp.refused_mails} mails refused as too fast"
    )
    assert elapsed <= 2 * floor


def test_a_postfix_message_rate_delivers_a_burst_close_to_the_relays_floor(
    broker, workers, smtp
):
    # Postfix's anvil: 20 mails per 10 s per client, then 450 at MAIL FROM.
    smtp.script.rate = 20
    smtp.script.rate_window = 10
    smtp.script.rate_reply = (
        "450 4.7.1 <no-reply@example.com>: Sender address rejected: "
        "Error: too much mail from 127.0.0.1"
    )

    deliveries, started = send_burst(broker, "anvil")
    wait_all_sent(deliveries, timeout=120)
    elapsed = time.monotonic() - started
    print_budget_changes(workers)

    assert_each_once_no_retry_none_parked(smtp, deliveries)
    floor = BURST / 2  # the relay's own rate, 2 mails a second
    print(
        f"\nrate 20 per 10 s: {BURST} mails in {elapsed:.1f} s (the relay's floor "
        f"{floor:.0f} s), {smtp.refused_mails} mails refused as too fast"
    )
    assert elapsed <= 1.25 * floor


def test_a_relay_answering_throttling_failures_above_its_rate_gets_80_percent_of_it(
    broker, workers, smtp
):
    smtp.script.rate = 10  # per second, then SES's 454
    deliveries, started = send_burst(broker, "held", count=800)
    wait_until(lambda: len(smtp.received) >= 50, timeout=30, what="sending")

    # Past the first seconds' burst: what the relay takes, over a minute.
    begin, first = time.monotonic(), len(smtp.received)
    time.sleep(60)
    held = (len(smtp.received) - first) / (time.monotonic() - begin)

    print(f"\nrate 10/s with 454 above it: {held:.2f} mails/s held over 60 s")
    assert held >= 0.8 * smtp.script.rate
    rows = Delivery.objects.filter(pk__in=[d.pk for d in deliveries])
    assert not rows.exclude(retries=0).exists()
    assert not rows.filter(waiting_for_relay=True).exists()
    assert not RelayState.objects.filter(down_since__isnull=False).exists()
