"""Relay faults: temporary refusals, permanent refusals, silence, outage."""

import threading
import time
from collections import Counter

import pytest
from django_celery_results.models import TaskResult

from mailer.models import Delivery
from tests.support import wait_for_delivery, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]


def test_temporary_refusals_are_retried_with_growing_backoff_then_sent_once(
    fault_stack, record
):
    smtp = fault_stack.start_smtp().handler
    email = "busy@example.com"
    smtp.script.replies[email] = [
        "450 4.2.1 Mailbox busy",
        "451 4.3.0 Try again later",
        "451 4.7.1 Greylisted",
    ]
    fault_stack.start_web()
    fault_stack.start_worker()

    assert fault_stack.register(email)[0] == 202
    task_id = Delivery.objects.get(user__email=email).task_id
    states = []

    def stored_state() -> str | None:
        result = TaskResult.objects.filter(task_id=task_id).first()
        if result and (not states or states[-1] != result.status):
            states.append(result.status)
        return result and result.status == "SUCCESS"

    wait_until(stored_state, timeout=30, interval=0.02, what="stored SUCCESS")
    row = wait_for_delivery(email=email, status="sent", timeout=30)

    assert "RETRY" in states, states
    assert len(smtp.mails_to(email)) == 1
    assert smtp.attempts[email] == 4
    assert row.attempts == 4 and row.retries == 3
    times = smtp.attempt_times[email]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    # Equal jitter over 0.5 s * 2**n: each gap at least the previous one's floor.
    assert gaps[0] >= 0.2 and gaps[1] >= 0.45 and gaps[2] >= 0.9, gaps
    record(
        scenario="5. relay answers 450/451 for one mail three times, then 250",
        happened=f"3 retries, gaps {', '.join(f'{g:.2f}' for g in gaps)} s; "
        f"row attempts={row.attempts}; stored result went {' -> '.join(states)}",
        expected=1,
        arrived=len(smtp.mails_to(email)),
        duplicates=len(smtp.mails_to(email)) - 1,
    )


def test_relay_that_never_answers_parks_the_mail_and_probes_without_holding_a_worker(
    fault_stack, record
):
    silent = fault_stack.start_silent_smtp()
    fault_stack.start_web()
    fault_stack.start_worker(concurrency=1)
    email = "silent@example.com"

    assert fault_stack.register(email)[0] == 202
    # The attempt connects, waits EMAIL_TIMEOUT for a greeting, gives up and
    # parks the mail, freeing its worker thread; then a probe connects.
    wait_until(lambda: len(silent.accepted) >= 2, timeout=30, what="a probe")
    row = Delivery.objects.get(user__email=email)
    assert row.attempts == 1 and row.retries == 0 and row.waiting_for_relay
    assert "timed out" in row.last_error.lower()

    fault_stack.stop_smtp()
    smtp = fault_stack.start_smtp().handler
    wait_for_delivery(email=email, status="sent", timeout=30)
    assert len(smtp.mails_to(email)) == 1
    record(
        scenario="7. relay accepts the connection and never answers",
        happened="the attempt timed out after EMAIL_TIMEOUT=2 s and the mail was "
        "parked, no retry spent; relay fixed: the next probe released it",
        expected=1,
        arrived=len(smtp.mails_to(email)),
        duplicates=len(smtp.mails_to(email)) - 1,
    )


def test_burst_while_the_relay_is_down_delivers_each_mail_once_when_it_returns(
    fault_stack, record
):
    count, outage = 500, 20.0
    # Rows whose message still waits in Redis must not count as lost while
    # the worker works through the burst (the test timing of 3 s would).
    fault_stack.env["MAILER_STALE_AFTER"] = "30"
    fault_stack.start_web()
    fault_stack.start_worker(concurrency=8)
    peak = {"rows": 0, "copies": 0}
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            tasks = fault_stack.queued_tasks()
            peak["rows"] = max(peak["rows"], len(tasks))
            copies = max((len(ids) for ids in tasks.values()), default=0)
            peak["copies"] = max(peak["copies"], copies)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    emails = [f"burst{n}@example.com" for n in range(count)]
    statuses = Counter()

    def register_all(chunk: list[str]) -> None:
        for email in chunk:
            statuses[fault_stack.register(email)[0]] += 1

    threads = [
        threading.Thread(target=register_all, args=(emails[i::8],)) for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert statuses == {202: count}

    time.sleep(max(0.0, outage - (time.monotonic() - started)))
    smtp = fault_stack.start_smtp().handler
    for email in emails:
        wait_for_delivery(email=email, status="sent", timeout=60, interval=0.5)
    sampling.set()
    sampler.join(5)

    per_address = Counter(
        rcpt.lower() for mail in smtp.received for rcpt in mail.rcpt_tos
    )
    assert set(per_address) == set(emails)
    assert max(per_address.values()) == 1
    assert peak["copies"] == 1, "a row had two different tasks in Redis at once"
    assert not Delivery.objects.exclude(status="sent").exists()
    record(
        scenario=f"11. burst of {count} registrations, relay down {outage:.0f} s",
        happened=f"all {count} answered 202; Redis held tasks for up to "
        f"{peak['rows']} rows, never two tasks for one row; all sent once the "
        "relay returned",
        expected=count,
        arrived=sum(per_address.values()),
        duplicates=sum(per_address.values()) - len(per_address),
    )
