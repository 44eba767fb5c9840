"""Process faults: Redis down or wiped, workers killed mid-send."""

import subprocess
import sys

import pytest

from mailer.models import Delivery
from tests.support import ROOT, wait_for_delivery, wait_until
from tests.support.redis import queue_length

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]


def copies(smtp, emails: list[str]) -> list[int]:
    return [len(smtp.mails_to(email)) for email in emails]


def test_registrations_while_redis_is_down_answer_at_once_and_mail_arrives_later(
    fault_stack, record
):
    smtp = fault_stack.start_smtp().handler
    fault_stack.start_web()
    fault_stack.start_worker()
    fault_stack.start_beat()
    fault_stack.redis.stop()
    emails = [f"redisdown{n}@example.com" for n in range(5)]

    answers = [fault_stack.register(email) for email in emails]
    health_status, health = fault_stack.get("/healthz")

    assert [status for status, _ in answers] == [202] * 5
    slowest = max(seconds for _, seconds in answers)
    assert slowest < 2.0, f"a registration took {slowest:.2f}s with Redis down"
    assert health_status == 503 and health["broker"] != "ok"
    assert (
        Delivery.objects.filter(user__email__in=emails, status="pending").count() == 5
    )

    fault_stack.redis.start()  # same port, empty
    for email in emails:
        wait_for_delivery(email=email, status="sent", timeout=40)

    assert copies(smtp, emails) == [1] * 5
    record(
        scenario="1. Redis stopped before registrations, then restarted",
        happened=f"5 registrations answered 202 (slowest {slowest:.2f} s), /healthz "
        "503; after the restart the sweeper re-dispatched the pending rows",
        expected=5,
        arrived=sum(copies(smtp, emails)),
        duplicates=sum(copies(smtp, emails)) - 5,
    )


def test_redis_restart_that_loses_queued_tasks_is_recovered_by_the_sweeper(
    fault_stack, record
):
    smtp = fault_stack.start_smtp().handler
    fault_stack.start_web()
    emails = [f"wiped{n}@example.com" for n in range(5)]
    for email in emails:
        assert fault_stack.register(email)[0] == 202
    assert queue_length(fault_stack.redis.client()) == 5

    fault_stack.redis.stop()
    fault_stack.redis.start()  # no persistence: the five messages are gone
    assert queue_length(fault_stack.redis.client()) == 0
    fault_stack.start_worker()
    fault_stack.start_beat()
    for email in emails:
        wait_for_delivery(email=email, status="sent", timeout=40)

    assert copies(smtp, emails) == [1] * 5
    record(
        scenario="2. Redis restarted without persistence while 5 tasks were queued",
        happened="the queue came back empty; the sweeper re-dispatched the 5 rows "
        "once their lease ran out",
        expected=5,
        arrived=sum(copies(smtp, emails)),
        duplicates=sum(copies(smtp, emails)) - 5,
    )


def test_worker_killed_while_its_smtp_session_stalls_mail_arrives_once(
    fault_stack, record
):
    smtp = fault_stack.start_smtp().handler
    smtp.script.rcpt_delay = 60  # the relay stalls before any data is sent
    fault_stack.start_web()
    worker = fault_stack.start_worker()
    fault_stack.start_beat()
    email = "stalled@example.com"

    assert fault_stack.register(email)[0] == 202
    wait_until(lambda: smtp.rcpt_seen >= 1, timeout=20, what="SMTP session at RCPT")
    worker.kill()
    smtp.script.rcpt_delay = 0
    fault_stack.start_worker("replacement")
    wait_for_delivery(email=email, status="sent", timeout=40)

    assert copies(smtp, [email]) == [1]
    record(
        scenario="3. worker SIGKILLed while its SMTP session stalled (before DATA)",
        happened="the row stayed 'sending' until its lease ran out; the sweeper "
        "handed it back and the new worker sent it",
        expected=1,
        arrived=len(smtp.mails_to(email)),
        duplicates=len(smtp.mails_to(email)) - 1,
    )


def test_worker_killed_after_the_relay_accepted_sends_at_most_one_extra_copy(
    fault_stack, record
):
    smtp = fault_stack.start_smtp().handler
    smtp.script.delay = 60  # the relay has the data but holds back its 250
    fault_stack.start_web()
    worker = fault_stack.start_worker()
    fault_stack.start_beat()
    email = "window@example.com"

    assert fault_stack.register(email)[0] == 202
    wait_until(lambda: smtp.data_started >= 1, timeout=20, what="message data sent")
    worker.kill()
    smtp.script.delay = 0
    fault_stack.start_worker("replacement")
    wait_for_delivery(email=email, status="sent", timeout=40)

    row = Delivery.objects.get(user__email=email)
    mails = smtp.mails_to(email)
    assert len(mails) == 2
    assert {mail.message["Message-ID"] for mail in mails} == {row.message_id}
    record(
        scenario="4. worker SIGKILLed after the relay accepted, before the row was "
        "marked sent",
        happened="the duplicate window: the relay had the mail, the row still said "
        "'sending'; the sweeper re-sent it. Both copies carry the row's Message-ID "
        f"{row.message_id}",
        expected=1,
        arrived=len(mails),
        duplicates=len(mails) - 1,
    )


def test_permanent_refusal_fails_at_once_and_resend_failed_delivers_once(
    fault_stack, record
):
    smtp = fault_stack.start_smtp().handler
    email = "refused@example.com"
    smtp.script.replies[email] = ["554 5.7.1 Relay access denied"]
    fault_stack.start_web()
    fault_stack.start_worker()

    assert fault_stack.register(email)[0] == 202
    row = wait_for_delivery(email=email, status="failed")
    assert (row.smtp_code, row.attempts) == (554, 1)
    assert "Relay access denied" in row.last_error
    assert smtp.attempts[email] == 1

    rerun = subprocess.run(
        [sys.executable, "manage.py", "resend_failed"],
        cwd=ROOT,
        env=fault_stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rerun.returncode == 0, rerun.stderr
    wait_for_delivery(email=email, status="sent")

    assert len(smtp.mails_to(email)) == 1
    record(
        scenario="6. relay answers 550, then the relay is fixed and resend_failed runs",
        happened="failed after 1 attempt with 550 and the relay's text kept; "
        "resend_failed re-dispatched it and it was sent",
        expected=1,
        arrived=len(smtp.mails_to(email)),
        duplicates=len(smtp.mails_to(email)) - 1,
    )
