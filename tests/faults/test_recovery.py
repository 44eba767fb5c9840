"""Recovery on the shipped defaults: seconds after a fault ends, not minutes.

Each test breaks one part of a real stack (web, workers, beat, Redis, an SMTP
server) with no MAILER_* setting changed, and measures from the moment the
fault ended to the relay's acceptance of the last mail the fault held up.
"""

import os
import re
import signal
import time

import pytest

from mailer.models import Delivery
from tests.support import wait_for_delivery, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]


def register_all(stack, emails: list[str]) -> None:
    for email in emails:
        assert stack.register(email)[0] == 202


def recovery(smtp, emails: list[str], *, fault_ended: float) -> float:
    """Seconds from the end of the fault to the relay taking the last mail."""
    last = max(smtp.attempt_times[email][-1] for email in emails)
    return last - fault_ended


def copies(smtp, emails: list[str]) -> list[int]:
    return [len(smtp.mails_to(email)) for email in emails]


def test_worker_killed_mid_send_its_mails_go_out_within_15s_of_a_new_worker(
    default_stack, record
):
    smtp = default_stack.start_smtp().handler
    smtp.script.rcpt_delay = 60  # the attempts hang at RCPT TO: mid-send
    default_stack.start_web()
    doomed = default_stack.start_worker()
    default_stack.start_beat()
    emails = [f"killed{n}@example.com" for n in range(3)]
    register_all(default_stack, emails)
    wait_until(lambda: smtp.rcpt_seen >= 3, timeout=20, what="three sends at RCPT")

    doomed.kill()
    smtp.script.rcpt_delay = 0
    default_stack.start_worker("replacement")
    fault_ended = time.monotonic()
    for email in emails:
        wait_for_delivery(email=email, status="sent", timeout=30)

    took = recovery(smtp, emails, fault_ended=fault_ended)
    assert copies(smtp, emails) == [1, 1, 1]
    assert took <= 15, f"mails arrived {took:.1f} s after the new worker was ready"
    # One rescue, or two when a renewal fell between the claims (their leases
    # then lapse a tick apart): the new worker's lifeline took all three.
    rescued = re.findall(
        r"lifeline rescued mails: reclaimed=(\d+)", default_stack.workers[1].log()
    )
    assert sum(map(int, rescued)) == 3, rescued
    record(
        scenario="12. worker SIGKILLed mid-send, defaults (no MAILER_* set)",
        happened=f"the new worker's lifeline took the 3 rows back when their "
        f"10 s lease lapsed; sent {took:.1f} s after it was ready",
        expected=3,
        arrived=sum(copies(smtp, emails)),
        duplicates=sum(copies(smtp, emails)) - 3,
        recovery=took,
    )


def test_frozen_worker_is_taken_over_within_30s_and_sends_no_copy_when_resumed(
    default_stack, record
):
    smtp = default_stack.start_smtp().handler
    smtp.script.rcpt_delay = 4  # long enough to freeze the worker mid-send
    default_stack.start_web()
    frozen = default_stack.start_worker()
    emails = [f"frozen{n}@example.com" for n in range(3)]
    register_all(default_stack, emails)
    wait_until(lambda: smtp.rcpt_seen >= 3, timeout=20, what="three sends at RCPT")
    smtp.script.rcpt_delay = 0
    default_stack.start_worker("healthy")

    os.kill(frozen.process.pid, signal.SIGSTOP)
    froze_at = time.monotonic()
    try:
        for email in emails:
            wait_for_delivery(email=email, status="sent", timeout=40)
        took = recovery(smtp, emails, fault_ended=froze_at)
    finally:
        os.kill(frozen.process.pid, signal.SIGCONT)
    time.sleep(6)  # the resumed attempts reach DATA, check their claim, give up

    assert copies(smtp, emails) == [1, 1, 1]
    assert took <= 30, f"another worker sent them {took:.1f} s after the freeze"
    assert frozen.log().count("claim lost before DATA") == 3
    record(
        scenario="13. worker frozen (SIGSTOP) mid-send, later resumed, defaults",
        happened=f"the other worker sent the 3 mails {took:.1f} s after the freeze; "
        "resumed, the frozen one found its claims gone before DATA and sent nothing",
        expected=3,
        arrived=sum(copies(smtp, emails)),
        duplicates=sum(copies(smtp, emails)) - 3,
        recovery=took,
    )


def test_registrations_while_redis_is_down_are_sent_within_10s_of_its_return(
    default_stack, record
):
    smtp = default_stack.start_smtp().handler
    default_stack.start_web()
    default_stack.start_worker()
    default_stack.start_beat()
    default_stack.redis.stop()
    emails = [f"redisgone{n}@example.com" for n in range(5)]
    register_all(default_stack, emails)
    time.sleep(15)  # long enough for the worker's reconnects to back off

    default_stack.redis.start()  # same port, empty
    back_at = time.monotonic()
    for email in emails:
        wait_for_delivery(email=email, status="sent", timeout=30)

    took = recovery(smtp, emails, fault_ended=back_at)
    assert copies(smtp, emails) == [1] * 5
    assert took <= 10, f"mails arrived {took:.1f} s after Redis answered"
    record(
        scenario="14. Redis down while 5 people registered, then back, defaults",
        happened=f"the failed dispatches left the rows due; a lifeline published "
        f"them once Redis answered; sent {took:.1f} s after",
        expected=5,
        arrived=sum(copies(smtp, emails)),
        duplicates=sum(copies(smtp, emails)) - 5,
        recovery=took,
    )


def test_redis_restart_that_loses_the_queue_is_noticed_within_seconds(
    default_stack, record
):
    smtp = default_stack.start_smtp().handler
    smtp.script.rcpt_delay = 3  # the worker is busy: the others wait in Redis
    default_stack.start_web()
    default_stack.start_worker(concurrency=1)
    emails = [f"wiped{n}@example.com" for n in range(6)]
    register_all(default_stack, emails)
    wait_until(lambda: smtp.rcpt_seen >= 1, timeout=20, what="the first send")
    smtp.script.rcpt_delay = 0

    default_stack.redis.stop()
    default_stack.redis.start()  # no persistence: what was queued is gone
    back_at = time.monotonic()
    for email in emails:
        wait_for_delivery(email=email, status="sent", timeout=30)

    took = recovery(smtp, emails, fault_ended=back_at)
    assert copies(smtp, emails) == [1] * 6
    assert took <= 15, f"mails arrived {took:.1f} s after Redis came back empty"
    assert "broker lost its data" in default_stack.workers[0].log()
    record(
        scenario="15. Redis restarted without persistence with mails queued, defaults",
        happened=f"a lifeline saw the broker's epoch key gone and made the pending "
        f"rows due; all sent {took:.1f} s after Redis came back",
        expected=6,
        arrived=sum(copies(smtp, emails)),
        duplicates=sum(copies(smtp, emails)) - 6,
        recovery=took,
    )


OUTAGES = {
    "connection refused": lambda stack: None,
    "421 at connect": lambda stack: stack.start_silent_smtp(
        greeting=b"421 4.3.2 Service not available\r\n"
    ),
    "421 at RCPT for everyone": lambda stack: _deferring(stack),
    "timeouts": lambda stack: stack.start_silent_smtp(),
}


def _deferring(stack):
    stack.start_smtp().handler.script.rcpt_reply = "421 4.3.2 Try again later"


@pytest.mark.parametrize("outage", OUTAGES)
def test_relay_outage_parks_mails_without_spending_retries_and_they_go_out_within_15s(
    default_stack, record, outage
):
    default_stack.start_web()
    default_stack.start_worker()
    OUTAGES[outage](default_stack)
    emails = [f"{outage.split()[0]}{n}@example.com" for n in range(5)]
    register_all(default_stack, emails)
    wait_until(
        lambda: Delivery.objects.filter(waiting_for_relay=True).count() == 5,
        timeout=40,
        what="five mails parked",
    )
    assert set(Delivery.objects.values_list("retries", flat=True)) == {0}

    default_stack.stop_smtp()
    smtp = default_stack.start_smtp().handler
    back_at = time.monotonic()
    for email in emails:
        wait_for_delivery(email=email, status="sent", timeout=30)

    took = recovery(smtp, emails, fault_ended=back_at)
    assert copies(smtp, emails) == [1] * 5
    assert took <= 15, f"mails arrived {took:.1f} s after the relay answered"
    log = default_stack.workers[0].log()
    assert "relay down:" in log and "relay back after" in log
    record(
        scenario=f"16. relay outage ({outage}), then back, defaults",
        happened=f"the mails were parked with no retry spent; a probe saw the relay "
        f"back and released them; sent {took:.1f} s after it answered",
        expected=5,
        arrived=sum(copies(smtp, emails)),
        duplicates=sum(copies(smtp, emails)) - 5,
        recovery=took,
    )
