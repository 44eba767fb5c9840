"""The relay budget's scripts against the suite's real redis-server."""

import signal
import time

import pytest

from mailer import budget
from tests.support import RedisServer, free_port


@pytest.fixture
def shared(redis_server, settings):
    """A budget in the suite's Redis with a cap of 3 and no fixed rate, emptied."""
    settings.MAILER_RELAY_MAX_CONNECTIONS = "3"
    settings.MAILER_RELAY_RATE = ""
    budget.forget()
    yield redis_server
    budget.forget()


def test_slots_stop_at_the_cap_and_a_released_slot_is_free_again(shared):
    granted = [budget.acquire_slot(holder=f"h{n}") for n in range(5)]
    for n in range(3):
        budget.mark_open(holder=f"h{n}")

    assert granted == [True, True, True, False, False]
    assert budget.open_connections() == 3
    budget.release_slot(holder="h1")
    assert budget.open_connections() == 2
    assert budget.acquire_slot(holder="h9") is True
    assert budget.acquire_slot(holder="h10") is False


def test_a_slot_whose_connection_is_still_opening_does_not_count_as_open(shared):
    budget.acquire_slot(holder="greeted")
    budget.mark_open(holder="greeted")
    budget.acquire_slot(holder="connecting")

    assert budget.open_connections() == 1
    assert budget.acquire_slot(holder="third") is True
    assert budget.acquire_slot(holder="fourth") is False  # the cap counts all three


def test_a_dead_workers_slots_free_themselves_when_their_hold_runs_out(
    shared, monkeypatch
):
    monkeypatch.setattr(budget, "SLOT_TTL", 1.0)
    for n in range(3):
        assert budget.acquire_slot(holder=f"dead{n}")
        budget.mark_open(holder=f"dead{n}")
    assert budget.acquire_slot(holder="alive") is False

    time.sleep(1.2)  # nobody renewed them

    assert budget.open_connections() == 0
    assert budget.acquire_slot(holder="alive") is True


def test_renewed_slots_outlive_their_first_hold(shared, monkeypatch):
    monkeypatch.setattr(budget, "SLOT_TTL", 1.0)
    for n in range(3):
        budget.acquire_slot(holder=f"h{n}")
        budget.mark_open(holder=f"h{n}")

    for _ in range(3):
        time.sleep(0.5)
        seen = budget.renew_slots(holders=["h0", "h1", "h2"])

    assert seen.open_now == 3 and seen.limits.concurrency == 3
    assert budget.acquire_slot(holder="late") is False


def test_a_connection_throttle_cuts_concurrency_to_the_connections_still_working(
    shared,
):
    change = budget.note_throttled(limit="connections", others_open=2)

    assert change.changed and change.started
    assert budget.current_limits().concurrency == 2
    assert [budget.acquire_slot(holder=f"h{n}") for n in range(3)] == [
        True,
        True,
        False,
    ]


def test_every_connection_throttle_may_lower_concurrency_never_raise_it(shared):
    budget.note_throttled(limit="connections", others_open=2)

    lower = budget.note_throttled(limit="connections", others_open=1)
    higher = budget.note_throttled(limit="connections", others_open=2)

    assert lower.changed and not lower.started
    assert not higher.changed
    assert budget.current_limits().concurrency == 1


def test_one_halving_of_the_rate_per_second_however_many_replies_say_so(
    shared, monkeypatch
):
    monkeypatch.setattr(budget, "CUT_EVERY", 0.0)
    budget.note_throttled(limit="rate", others_open=0)  # watches first
    budget.note_throttled(limit="rate", others_open=0)  # nothing accepted: 1/s
    monkeypatch.setattr(budget, "CUT_EVERY", 1.0)

    again = budget.note_throttled(limit="rate", others_open=0)

    assert not again.changed and not again.started
    assert budget.current_limits().rate == 1


def test_a_run_of_accepted_mails_raises_concurrency_back_to_the_ceiling(shared):
    budget.note_throttled(limit="connections", others_open=1)

    raised = [budget.note_accepted() for _ in range(10)]

    assert [c.changed for c in raised] == [False] * 9 + [True]
    assert budget.current_limits().concurrency == 2
    for _ in range(10):
        budget.note_accepted()
    assert budget.current_limits().concurrency == 3  # the ceiling: learned no more
    assert budget.current_limits() == budget.Limits(concurrency=3, rate=None)


def test_a_rate_throttle_sets_the_rate_the_relay_accepted(shared, monkeypatch):
    monkeypatch.setattr(budget, "CUT_EVERY", 0.0)
    for _ in range(20):
        budget.note_accepted()
    budget.note_throttled(limit="rate", others_open=0)  # watches first

    change = budget.note_throttled(limit="rate", others_open=0)

    # 20 accepted within the last one or two seconds.
    assert change.changed
    assert 10 <= budget.current_limits().rate <= 20


def test_the_first_rate_throttle_watches_even_after_a_few_250s(shared):
    """A burst's first second says little: 1 mail in it must not set 1/s."""
    budget.note_accepted()

    first = budget.note_throttled(limit="rate", others_open=0)

    assert first.started and not first.changed
    assert budget.current_limits().rate is None


def test_the_first_rate_throttle_watches_one_second_before_it_cuts(shared):
    """No 250 counted yet: no guess; the next reply cuts to what was accepted."""
    first = budget.note_throttled(limit="rate", others_open=0)

    assert first.started and not first.changed
    assert budget.current_limits().rate is None


def test_a_rate_throttle_with_nothing_accepted_starts_at_one_per_second(
    shared, monkeypatch
):
    monkeypatch.setattr(budget, "CUT_EVERY", 0.0)
    budget.note_throttled(limit="rate", others_open=0)

    budget.note_throttled(limit="rate", others_open=0)

    assert budget.current_limits().rate == 1


def test_a_throttle_below_a_learned_rate_halves_it(shared, monkeypatch):
    monkeypatch.setattr(budget, "CUT_EVERY", 0.0)
    budget.note_throttled(limit="rate", others_open=0)  # watches first
    budget.note_throttled(limit="rate", others_open=0)  # 1/s, nothing accepted

    budget.note_throttled(limit="rate", others_open=0)
    budget.note_throttled(limit="rate", others_open=0)

    assert budget.current_limits().rate == 0.25


def learn_rate(rate: float) -> None:
    """A rate learned earlier in the episode, as the scripts store it."""
    budget._client().hset(budget.LIMITS_KEY, mapping={"rate": str(rate)})


def test_one_cut_at_most_halves_the_rate_in_force(shared, monkeypatch):
    """A few 250s in a window we did not fill read low: no cut to them at once."""
    monkeypatch.setattr(budget, "CUT_EVERY", 0.0)
    for _ in range(3):
        budget.note_accepted()
    learn_rate(20)

    change = budget.note_throttled(limit="rate", others_open=0)

    assert change.changed
    assert budget.current_limits().rate == 10


def test_after_a_cut_the_rate_climbs_back_toward_the_refused_one_in_few_runs(
    shared, monkeypatch
):
    monkeypatch.setattr(budget, "CUT_EVERY", 0.0)
    learn_rate(20)
    budget.note_throttled(limit="rate", others_open=0)  # nothing accepted: 10/s

    for _ in range(10):  # a run of a second's worth at 10/s
        budget.note_accepted()

    # Half the way back to 0.9 of the refused 20/s, not a tenth more.
    assert budget.current_limits().rate == pytest.approx(14)


def test_above_nine_tenths_of_the_refused_rate_it_climbs_a_tenth_a_run(
    shared, monkeypatch
):
    monkeypatch.setattr(budget, "CUT_EVERY", 0.0)
    for _ in range(200):  # far more than 10/s: a cut to 0.9 of 20/s
        budget.note_accepted()
    learn_rate(20)
    budget.note_throttled(limit="rate", others_open=0)
    assert budget.current_limits().rate == pytest.approx(18)

    for _ in range(18):
        budget.note_accepted()

    assert budget.current_limits().rate == pytest.approx(19.8)


def test_a_fixed_rate_spaces_the_sends_and_says_how_far_the_next_turn_is(
    shared, settings
):
    # One a second, so that a pause of this machine's of up to half a second
    # between two calls leaves every turn on the same side of max_wait.
    settings.MAILER_RELAY_RATE = "1"

    turns = [budget.reserve_send(max_wait=2.5) for _ in range(5)]

    waits = [t.wait for t in turns if t.reserved]
    assert len(waits) == 3  # at 0, 1 and 2 s: the next is past 2.5 s
    assert waits[0] == 0 and 0.5 < waits[1] <= 1.0 and 1.5 < waits[2] <= 2.0
    assert not turns[3].reserved and 2.5 < turns[3].wait <= 3.0


def test_a_mail_that_waited_takes_its_turn_before_newer_mails(shared, settings):
    settings.MAILER_RELAY_RATE = "1"  # turns a second apart; see above
    for _ in range(3):  # turns at 0, 1 and 2 s go to mails without a place
        assert budget.reserve_send(max_wait=2.5).reserved

    newer = budget.reserve_send(max_wait=2.5, place=200)
    older = budget.reserve_send(max_wait=2.5, place=100)
    newer_again = budget.reserve_send(max_wait=2.5, place=200)
    time.sleep(1.0)
    newer_later = budget.reserve_send(max_wait=2.5, place=200)
    older_later = budget.reserve_send(max_wait=2.5, place=100)

    assert not newer.reserved and 2.5 < newer.wait <= 3.0
    # The older mail asks second, yet its turn is the next one, and the
    # newer mail's turn moves behind it.
    assert not older.reserved and 2.5 < older.wait <= 3.0
    assert not newer_again.reserved and 3.5 < newer_again.wait <= 4.0
    assert not newer_later.reserved  # its turn is at 4 s, 3 s away
    assert older_later.reserved  # its turn is at 3 s, 2 s away
    assert budget.renew_slots(holders=[]).waiting == 1


def test_a_place_not_asked_for_within_the_hold_frees_itself(
    shared, settings, monkeypatch
):
    settings.MAILER_RELAY_RATE = "2"  # turns half a second apart
    monkeypatch.setattr(budget, "LINE_HOLD", 1.0)
    assert budget.reserve_send(max_wait=0.5).reserved
    assert budget.reserve_send(max_wait=0.5).reserved  # the window is full
    assert not budget.reserve_send(max_wait=0.5, place=1).reserved

    time.sleep(1.2)  # place 1's task died: it never asks again
    # Behind place 1 its turn would be 0.5 s away, past this max_wait.
    turn = budget.reserve_send(max_wait=0.25, place=2)

    assert turn.reserved
    assert budget.renew_slots(holders=[]).waiting == 0


def test_without_a_rate_in_force_a_mail_takes_no_place_in_line(shared):
    turns = [budget.reserve_send(max_wait=0.1, place=n) for n in range(20)]

    assert all(t.reserved and t.wait == 0 for t in turns)
    assert budget.renew_slots(holders=[]).waiting == 0


def test_no_rate_in_force_means_no_wait(shared):
    turns = [budget.reserve_send(max_wait=0.1) for _ in range(50)]

    assert all(t.reserved and t.wait == 0 for t in turns)


def test_a_learned_rate_below_the_fixed_one_sets_the_pace(shared, settings):
    settings.MAILER_RELAY_RATE = "4"
    budget.note_throttled(limit="rate", others_open=0)  # nothing accepted: half

    first = budget.reserve_send(max_wait=1)
    second = budget.reserve_send(max_wait=1)

    assert budget.current_limits().rate == 2
    assert first.reserved and second.reserved
    # Half a second apart, less the time between the two calls; the fixed
    # rate would have spaced them a quarter of a second.
    assert 0.3 < second.wait - first.wait <= 0.5


def test_learned_limits_expire_after_the_last_throttle(shared, monkeypatch):
    monkeypatch.setattr(budget, "LEARNED_TTL", 1)
    budget.note_throttled(limit="connections", others_open=1)
    budget.note_throttled(limit="rate", others_open=0)

    time.sleep(2.1)

    assert budget.current_limits() == budget.Limits(concurrency=3, rate=None)


def test_an_unreachable_budget_answers_at_once_and_lets_sends_through(settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens
    budget.forget()
    started = time.monotonic()

    slot = budget.acquire_slot(holder="h")
    turn = budget.reserve_send(max_wait=1)
    change = budget.note_throttled(limit="rate", others_open=0)

    assert slot is None and change is None
    assert turn.reserved and turn.wait == 0
    assert time.monotonic() - started < 1.0
    budget.forget()


def test_a_frozen_redis_costs_a_send_half_a_second_once(settings):
    server = RedisServer(free_port()).start()
    settings.REDIS_URL = server.url
    budget.forget()
    try:
        assert budget.acquire_slot(holder="h") is True
        server.process.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        first = budget.acquire_slot(holder="h2")
        second = budget.acquire_slot(holder="h3")
        elapsed = time.monotonic() - started
    finally:
        server.process.send_signal(signal.SIGCONT)
        budget.forget()
        server.cleanup()

    assert first is None and second is None
    assert elapsed < 1.5


def evalsha_calls(server) -> int:
    stats = server.client().info("commandstats")
    return stats.get("cmdstat_evalsha", {}).get("calls", 0)


def sent_counted() -> int:
    return sum(int(n) for n in budget._client().hvals(budget.SENT_KEY))


def test_while_quiet_a_send_asks_redis_nothing_and_the_renewal_counts_it(shared):
    assert budget.renew_slots(holders=[]) is not None  # nothing learned: quiet
    before = evalsha_calls(shared)

    for _ in range(20):
        assert budget.reserve_send(max_wait=0.1, place=1) == budget.Turn(True, 0.0)
        assert budget.note_accepted() is None

    assert evalsha_calls(shared) == before
    assert sent_counted() == 0
    budget.renew_slots(holders=[])
    assert sent_counted() == 20


def test_a_throttle_reply_ends_the_quiet_here_at_once_and_elsewhere_at_renewal(
    shared,
):
    budget.renew_slots(holders=[])
    budget.note_throttled(limit="rate", others_open=0)  # here: asks again at once
    before = evalsha_calls(shared)

    budget.reserve_send(max_wait=0.1)
    budget.note_accepted()

    assert evalsha_calls(shared) >= before + 2
    budget._quiet.renewed(quiet=True)  # another process, renewed before the reply
    budget.renew_slots(holders=[])
    assert not budget._quiet.now()


def test_a_learned_limit_keeps_every_send_asking(shared):
    budget.note_throttled(limit="connections", others_open=2)
    budget.renew_slots(holders=[])
    before = evalsha_calls(shared)

    budget.reserve_send(max_wait=0.1)
    budget.note_accepted()

    assert evalsha_calls(shared) >= before + 2


def test_a_fixed_rate_paces_every_send_even_while_quiet(shared, settings):
    settings.MAILER_RELAY_RATE = "2"
    budget.renew_slots(holders=[])

    first = budget.reserve_send(max_wait=0.1)
    second = budget.reserve_send(max_wait=0.1)

    assert first.reserved and first.wait == 0
    assert not second.reserved and second.wait > 0.3
