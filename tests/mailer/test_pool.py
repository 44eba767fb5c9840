"""The per-process SMTP pool within the shared budget, against real servers."""

import os
import subprocess
import sys
import threading
import time

import pytest
from django.core.mail import EmailMessage

from mailer import budget
from mailer import pool as pool_module
from mailer.pool import NoBudget, Pool
from tests.support import ROOT, free_port, wait_until


@pytest.fixture
def shared(redis_server, settings, smtp, real_smtp):
    """The suite's Redis and SMTP server, a cap of 3, a fresh budget and pool."""
    settings.MAILER_RELAY_MAX_CONNECTIONS = "3"
    settings.MAILER_RELAY_RATE = ""
    budget.forget()
    pool = Pool()
    yield pool
    pool.stop()
    budget.forget()


def mail(to: str) -> EmailMessage:
    return EmailMessage(
        subject="hi", body="hi", from_email="no-reply@example.com", to=[to]
    )


def send_from_threads(pool: Pool, *, threads: int, each: int) -> None:
    def send(thread: int) -> None:
        for n in range(each):
            with pool.connection(wait=20) as conn:
                conn.send(mail(f"t{thread}-{n}@example.com"))

    workers = [threading.Thread(target=send, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def test_sixteen_threads_share_three_connections_and_every_mail_goes_out(shared, smtp):
    send_from_threads(shared, threads=16, each=5)

    assert len(smtp.received) == 80
    assert smtp.most_sessions_open <= 3
    assert budget.open_connections() <= 3


def test_two_processes_of_sixteen_threads_never_open_more_than_the_cap(
    redis_server, smtp, settings
):
    budget.forget()
    env = {
        **os.environ,
        "MAILER_RELAY_MAX_CONNECTIONS": "4",
        "EMAIL_BACKEND": "mailer.smtp.EmailBackend",
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.mailer.pool_load", "16", "10", f"p{n}"],
            cwd=ROOT,
            env=env,
        )
        for n in range(2)
    ]
    try:
        codes = [process.wait(120) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(5)

    assert codes == [0, 0]
    assert len(smtp.received) == 2 * 16 * 10
    assert 2 <= smtp.most_sessions_open <= 4


def test_an_idle_connection_closes_and_gives_its_slot_back(shared, smtp, monkeypatch):
    monkeypatch.setattr(pool_module, "IDLE_CLOSE_AFTER", 0.3)
    with shared.connection(wait=1) as conn:
        conn.send(mail("a@example.com"))
    assert budget.open_connections() == 1 and smtp.sessions_open == 1

    # The reaper thread, on its own.
    wait_until(lambda: smtp.sessions_open == 0, timeout=5, what="idle QUIT")

    assert budget.open_connections() == 0
    assert shared.open_count() == 0


def test_a_pooled_connection_is_reused_while_it_is_busy_enough(shared, smtp):
    for n in range(5):
        with shared.connection(wait=1) as conn:
            conn.send(mail(f"r{n}@example.com"))

    assert smtp.connections == 1 and len(smtp.received) == 5


def test_no_slot_within_the_wait_says_so_instead_of_blocking(shared):
    held = [shared.checkout(wait=1) for _ in range(3)]
    started = time.monotonic()

    with pytest.raises(NoBudget):
        shared.checkout(wait=0.3)

    assert 0.3 <= time.monotonic() - started < 1.5
    for conn in held:
        shared.checkin(conn)


def test_a_connection_checked_in_frees_a_waiting_thread(shared):
    held = [shared.checkout(wait=1) for _ in range(3)]
    got = []
    waiter = threading.Thread(target=lambda: got.append(shared.checkout(wait=5)))
    waiter.start()
    time.sleep(0.2)

    shared.checkin(held.pop())
    waiter.join(5)

    assert got and budget.open_connections() == 3
    for conn in [*held, *got]:
        shared.checkin(conn)


def test_idle_connections_give_their_slots_to_another_process_waiting_for_one(
    shared, smtp
):
    """Another worker process (its own pool) wants a slot: idle ones here yield.

    Without that, the other process's threads wait out IDLE_CLOSE_AFTER while
    this one's connections sit idle on every slot.
    """
    other = Pool()
    try:
        held = [shared.checkout(wait=1) for _ in range(3)]
        for conn in held:
            shared.checkin(conn)  # pooled, idle, on every slot
        with pytest.raises(NoBudget):
            other.checkout(wait=0.2)

        time.sleep(pool_module.IDLE_YIELD_AFTER)
        shared.reap()  # the reaper's next round

        assert shared.open_count() == 0
        with other.connection(wait=1) as conn:
            conn.send(mail("waited@example.com"))
        assert len(smtp.received) == 1
    finally:
        other.stop()


def test_idle_connections_stay_pooled_while_nobody_else_waits(shared, smtp):
    held = [shared.checkout(wait=1) for _ in range(3)]
    for conn in held:
        shared.checkin(conn)

    shared.reap()

    assert shared.open_count() == 3


def test_idle_connections_above_a_learned_limit_close(shared, smtp):
    held = [shared.checkout(wait=1) for _ in range(3)]
    for conn in held:
        shared.checkin(conn)
    budget.note_throttled(limit="connections", others_open=1)

    shared.reap()

    assert smtp.sessions_open <= 1 or wait_until(
        lambda: smtp.sessions_open <= 1, timeout=3, what="closed above the limit"
    )
    assert budget.open_connections() <= 1


def test_a_421_at_the_greeting_gives_the_slot_back(shared, smtp):
    smtp.script.max_connections = 1
    first = shared.checkout(wait=1)

    with pytest.raises(OSError) as refused:
        shared.checkout(wait=1)

    assert refused.value.smtp_code == 421
    assert budget.open_connections() == 1
    shared.checkin(first)


def test_without_redis_the_pool_still_sends_within_its_own_cap(
    settings, smtp, real_smtp
):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    settings.MAILER_RELAY_MAX_CONNECTIONS = "2"
    budget.forget()
    pool = Pool()
    try:
        send_from_threads(pool, threads=6, each=3)
    finally:
        pool.stop()
        budget.forget()

    assert len(smtp.received) == 18
    assert smtp.most_sessions_open <= 2


def test_connections_opened_while_the_budget_was_away_join_it_or_close_when_it_is_back(
    shared, smtp
):
    # Redis away: the pool opens connections on this process's own cap.
    budget._state.retry_at = time.monotonic() + 60
    local = [shared.checkout(wait=1) for _ in range(3)]
    assert all(conn.holder is None for conn in local)
    # Redis back, where other processes already hold two of the three slots.
    budget._state.retry_at = 0.0
    for other in ("other-1", "other-2"):
        assert budget.acquire_slot(holder=other) is True
        budget.mark_open(holder=other)

    for conn in local:
        conn.send(mail("once@example.com"))
        shared.checkin(conn)

    # One took the free slot; the others were closed, not kept beside the
    # budget, where the relay's cap would count them and the budget not.
    assert shared.open_count() == 1
    assert [conn.holder is not None for conn in shared.idle] == [True]
    assert budget.open_connections() == 3
    wait_until(lambda: smtp.sessions_open == 1, timeout=5, what="two QUITs")
    assert len(smtp.received) == 3


def test_a_killed_workers_slots_free_themselves_within_seconds(
    redis_server, smtp, settings
):
    settings.MAILER_RELAY_MAX_CONNECTIONS = "3"
    budget.forget()
    env = {
        **os.environ,
        "MAILER_RELAY_MAX_CONNECTIONS": "3",
        "EMAIL_BACKEND": "mailer.smtp.EmailBackend",
    }
    holder = subprocess.Popen(
        [sys.executable, "-m", "tests.mailer.pool_hold", "3"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == b"held"
        assert budget.acquire_slot(holder="newcomer") is False
        holder.kill()  # SIGKILL: no QUIT, no slot given back
        holder.wait(5)
        killed = time.monotonic()

        wait_until(
            lambda: budget.acquire_slot(holder="newcomer"),
            timeout=budget.SLOT_TTL + 5,
            what="a slot freed",
        )
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(5)
        budget.forget()

    assert time.monotonic() - killed <= budget.SLOT_TTL + 1.5
