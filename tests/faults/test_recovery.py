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

from mailer.lifeline import EPOCH_KEY
from mailer.models import Delivery
from tests.support import wait_for_delivery, wait_until
from tests.support.redis import queue_length

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


PREFETCH_CONCURRENCY = 4
PREFETCH_MULTIPLIER = 2  # the Procfile's


@pytest.mark.parametrize("fault", ["SIGKILL", "SIGSTOP"])
def test_worker_killed_or_frozen_holding_prefetched_mails_they_go_out_within_15s(
    default_stack, record, fault
):
    smtp = default_stack.start_smtp().handler
    smtp.script.rcpt_delay = 60  # the first attempts hang: the rest wait prefetched
    default_stack.start_web()
    doomed = default_stack.start_worker(
        concurrency=PREFETCH_CONCURRENCY,
        prefetch_multiplier=PREFETCH_MULTIPLIER,
        new_session=True,
    )
    held = PREFETCH_CONCURRENCY * PREFETCH_MULTIPLIER
    emails = [f"prefetched{n}@example.com" for n in range(3 * PREFETCH_CONCURRENCY)]
    register_all(default_stack, emails)
    broker = default_stack.redis.client()
    wait_until(
        lambda: (
            smtp.rcpt_seen >= PREFETCH_CONCURRENCY and broker.hlen("unacked") == held
        ),
        timeout=20,
        what=f"{PREFETCH_CONCURRENCY} sends at RCPT and {held} messages taken",
    )
    time.sleep(0.5)  # well within one heartbeat of the receipts

    group = doomed.process.pid
    os.killpg(group, getattr(signal, fault))
    faulted_at = time.monotonic()
    smtp.script.rcpt_delay = 0
    try:
        default_stack.start_worker("replacement")
        ready_at = time.monotonic()
        for email in emails:
            wait_for_delivery(email=email, status="sent", timeout=40)
        took = recovery(smtp, emails, fault_ended=ready_at)
    finally:
        if fault == "SIGSTOP":
            os.killpg(group, signal.SIGCONT)
    if fault == "SIGSTOP":
        time.sleep(6)  # the resumed worker finds its claims gone and sends nothing

    assert copies(smtp, emails) == [1] * len(emails)
    assert took <= 15, f"mails arrived {took:.1f} s after the new worker was ready"
    assert set(Delivery.objects.values_list("retries", flat=True)) == {0}
    what = {"SIGKILL": "SIGKILLed", "SIGSTOP": "frozen (SIGSTOP), later resumed,"}
    record(
        scenario=f"21. worker's process group {what[fault]} holding "
        f"{PREFETCH_CONCURRENCY} mails mid-send and "
        f"{held - PREFETCH_CONCURRENCY} prefetched, {len(emails) - held} more "
        "queued, defaults",
        happened=f"each receipt had renewed its row's lease to MAILER_LEASE; the "
        f"new worker's lifeline took the {held} rows back; all sent {took:.1f} s "
        f"after it was ready ({ready_at - faulted_at:.1f} s after the fault)",
        expected=len(emails),
        arrived=sum(copies(smtp, emails)),
        duplicates=sum(copies(smtp, emails)) - len(emails),
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


def test_worker_frozen_while_redis_restarts_empty_lives_on_and_its_mails_go_out(
    default_stack, record
):
    smtp = default_stack.start_smtp().handler
    smtp.script.rcpt_delay = 3  # the worker holds attempts and prefetched messages
    default_stack.start_web()
    frozen = default_stack.start_worker(concurrency=2, prefetch_multiplier=2)
    emails = [f"restarted{n}@example.com" for n in range(8)]
    register_all(default_stack, emails)
    wait_until(lambda: smtp.rcpt_seen >= 2, timeout=20, what="two sends at RCPT")

    os.kill(frozen.process.pid, signal.SIGSTOP)
    try:
        default_stack.redis.stop()
        default_stack.redis.start()  # no persistence: queued and unacked are gone
        time.sleep(5)
    finally:
        os.kill(frozen.process.pid, signal.SIGCONT)
    resumed_at = time.monotonic()
    smtp.script.rcpt_delay = 0
    for email in emails:
        wait_for_delivery(email=email, status="sent", timeout=40)
    time.sleep(3)  # a consumer that dies of the restart does so at once

    took = recovery(smtp, emails, fault_ended=resumed_at)
    log = frozen.log()
    assert frozen.process.poll() is None, f"the worker exited:\n{log[-3000:]}"
    assert "Unrecoverable error" not in log
    assert copies(smtp, emails) == [1] * len(emails)
    assert took <= 15, f"mails arrived {took:.1f} s after the worker was resumed"
    record(
        scenario="22. worker frozen (SIGSTOP) while Redis restarted without "
        "persistence, then resumed, defaults",
        happened=f"the resumed worker reconnected and lived on; its lifeline saw "
        f"the broker's epoch change and re-dispatched the lost messages; all "
        f"sent {took:.1f} s after it was resumed",
        expected=len(emails),
        arrived=sum(copies(smtp, emails)),
        duplicates=sum(copies(smtp, emails)) - len(emails),
        recovery=took,
    )


def test_redis_emptied_while_no_worker_ran_is_noticed_by_the_next_workers_lifeline(
    default_stack, record
):
    smtp = default_stack.start_smtp().handler
    default_stack.start_web()
    default_stack.start_worker()
    broker = default_stack.redis.client()
    wait_until(lambda: broker.get(EPOCH_KEY), timeout=10, what="the broker's epoch")
    default_stack.workers[0].stop()  # a deploy: no lifeline watches for a while
    emails = [f"unwatched{n}@example.com" for n in range(5)]
    register_all(default_stack, emails)
    assert queue_length(broker) == 5

    default_stack.redis.stop()
    default_stack.redis.start()  # no persistence: the five messages are gone
    default_stack.start_worker("next")
    ready_at = time.monotonic()
    for email in emails:
        wait_for_delivery(email=email, status="sent", timeout=40)

    took = recovery(smtp, emails, fault_ended=ready_at)
    assert copies(smtp, emails) == [1] * 5
    assert took <= 15, f"mails arrived {took:.1f} s after the next worker was ready"
    record(
        scenario="23. Redis restarted without persistence while no worker ran "
        "(a deploy), 5 mails queued, defaults",
        happened="the next worker's first lifeline beat found no epoch in the "
        f"broker and made the pending rows due; sent {took:.1f} s after it was "
        "ready, not after the MAILER_STALE_AFTER backstop",
        expected=5,
        arrived=sum(copies(smtp, emails)),
        duplicates=sum(copies(smtp, emails)) - 5,
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


def test_relay_dropping_every_mail_after_data_gets_one_trial_mail_per_probe(
    default_stack, record
):
    """A relay that answers every probe (no DATA) and cuts every connection
    after the data: each probe lets one parked mail through, not all of
    them, and the probes do not slow down; once the relay takes mail again,
    every mail is sent within 15 s, once."""
    default_stack.start_web()
    worker = default_stack.start_worker()
    smtp = default_stack.start_smtp().handler
    smtp.script.drop_after_data = True
    emails = [f"dropped{n}@example.com" for n in range(10)]
    register_all(default_stack, emails)

    def trials() -> int:
        return worker.log().count("goes first as a trial")

    wait_until(lambda: trials() >= 3, timeout=40, what="three trial mails")
    tried = smtp.data_started
    trial_count = trials()  # read after: a trial in flight is counted too
    assert tried <= len(emails) + trial_count, (
        f"{tried} mails reached DATA for {len(emails)} mails and {trial_count} "
        "trials: a probe released more than its trial"
    )
    assert set(Delivery.objects.values_list("retries", flat=True)) == {0}
    assert "relay back after" not in worker.log()

    smtp.script.drop_after_data = False
    back_at = time.monotonic()
    for email in emails:
        wait_for_delivery(email=email, status="sent", timeout=30)

    took = recovery(smtp, emails, fault_ended=back_at)
    assert copies(smtp, emails) == [1] * len(emails)
    assert took <= 15, f"mails arrived {took:.1f} s after the relay took mail again"
    record(
        scenario="24. relay answers every probe and drops every mail after DATA, "
        "then takes mail again, defaults",
        happened=f"{tried} DATA for {len(emails)} mails while it dropped "
        f"({trial_count} probes, one trial mail each, no retry spent); sent "
        f"{took:.1f} s after it took mail again",
        expected=len(emails),
        arrived=sum(copies(smtp, emails)),
        duplicates=sum(copies(smtp, emails)) - len(emails),
        recovery=took,
    )
