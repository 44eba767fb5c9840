"""resend_failed against a real broker, worker and SMTP server."""

import subprocess
import sys
import time
from io import StringIO

import pytest
from django.contrib.auth.hashers import make_password
from django.core.management import call_command
from django.utils import timezone

from mailer.models import Delivery
from tests.conftest import worker_env
from tests.support import ROOT, RedisServer, free_port, register, wait_for_delivery
from tests.support.redis import queue_length
from users.models import User

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

PASSWORD = "correct horse battery staple"


def resend_failed(*args: str) -> str:
    out = StringIO()
    call_command("resend_failed", *args, stdout=out)
    return out.getvalue()


def resend_failed_in_a_process(*args: str, env: dict[str, str]):
    return subprocess.run(
        [sys.executable, "manage.py", "resend_failed", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )


def register_and_fail(client, smtp, emails: list[str]) -> list[Delivery]:
    for email in emails:
        smtp.script.replies[email] = ["554 5.7.1 Relay access denied"]
        register(client, email)
    return [wait_for_delivery(email=email, status="failed") for email in emails]


def test_a_rerun_delivers_each_failed_mail_once_and_a_second_run_finds_nothing(
    celery_worker, client, smtp
):
    emails = [f"bounced{n}@example.com" for n in range(3)]
    failed = register_and_fail(client, smtp, emails)
    assert all(smtp.mails_to(email) == [] for email in emails)

    first = resend_failed()
    for email in emails:
        wait_for_delivery(email=email, status="sent")
    second = resend_failed()

    assert (
        "Rerun 3 failed deliveries (3 with a failed task result), skipped 0." in first
    )
    assert "3 x 554 5.7.1 Relay access denied" in first
    assert second.startswith("Nothing to rerun: Rerun 0 failed deliveries")
    for email in emails:
        assert len(smtp.mails_to(email)) == 1
    for row in failed:
        rerun = Delivery.objects.get(pk=row.pk)
        assert rerun.task_id != row.task_id
        assert rerun.attempts == 2


def test_an_unreachable_broker_is_refused_and_every_row_stays_failed(
    celery_worker, client, smtp
):
    [row] = register_and_fail(client, smtp, ["nobroker@example.com"])
    env = worker_env(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")

    started = time.monotonic()
    result = resend_failed_in_a_process(env=env)
    elapsed = time.monotonic() - started

    assert result.returncode == 1
    assert "Broker unreachable: nothing was marked for rerun." in result.stderr
    assert elapsed < 30
    unchanged = Delivery.objects.get(pk=row.pk)
    assert (unchanged.status, unchanged.task_id) == ("failed", row.task_id)


@pytest.fixture
def private_redis():
    server = RedisServer(free_port()).start()
    yield server
    server.cleanup()


def test_ten_thousand_failed_rows_are_redispatched_in_one_run(private_redis, capsys):
    """Benchmark: the elapsed time is printed, not asserted (machines differ)."""
    count = 10_000
    password = make_password(PASSWORD)
    users = User.objects.bulk_create(
        User(email=f"bulk{n}@example.com", password=password) for n in range(count)
    )
    Delivery.objects.bulk_create(
        Delivery(
            user=user,
            kind=Delivery.Kind.WELCOME,
            status=Delivery.Status.FAILED,
            task_id=f"old-{user.pk}",
            smtp_code=550,
            last_error="5.1.1 Mailbox does not exist",
            lease_expires_at=timezone.now(),
        )
        for user in users
    )
    env = worker_env(REDIS_URL=private_redis.url)

    started = time.monotonic()
    result = resend_failed_in_a_process(env=env)
    elapsed = time.monotonic() - started

    assert result.returncode == 0, result.stderr
    assert f"Rerun {count} failed deliveries" in result.stdout
    assert queue_length(private_redis.client()) == count
    assert Delivery.objects.filter(status="pending").count() == count
    with capsys.disabled():
        print(f"\nresend_failed: {count} rows redispatched in {elapsed:.1f}s")
