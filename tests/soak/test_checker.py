"""The checker on made-up runs: it must flag what a soak must never show."""

from tests.soak.checker import WelcomeRow, by_kind, check, percentile
from tests.soak.faults import AppliedFault, FaultKind, PlannedFault
from tests.soak.load import Registration
from tests.soak.relay import Accepted

WORKER = 4242


def registration(email: str, answered_at: float) -> Registration:
    return Registration(email, answered_at - 0.05, answered_at, 202)


def row(email: str, status: str = "sent", created_at: float = 0.0) -> WelcomeRow:
    return WelcomeRow(email, f"<{email}>", status, 1, created_at)


def mail(email: str, at: float, pid: int | None = WORKER) -> Accepted:
    return Accepted(f"<{email}>", email, at, 1_700_000_000 + at, pid)


def fault(
    kind: FaultKind, started: float, ended: float, *, number: int = 1, pid=None
) -> AppliedFault:
    applied = AppliedFault(PlannedFault(number, kind, started, ended - started))
    applied.pid = pid
    applied.abrupt = kind in (FaultKind.WORKER_KILL, FaultKind.WORKER_FREEZE)
    applied.started, applied.ended = started, ended
    applied.started_wall = 1_700_000_000 + started
    applied.ended_wall = 1_700_000_000 + ended
    return applied


def test_one_mail_each_passes_with_latency_from_the_202():
    verdict = check(
        registrations=[registration("a@x", 1.0), registration("b@x", 2.0)],
        rows=[row("a@x"), row("b@x")],
        accepted=[mail("a@x", 1.5), mail("b@x", 3.0)],
        faults=[],
    )

    assert verdict.ok
    assert (verdict.registered, verdict.delivered, verdict.exactly_once) == (2, 2, 2)
    assert verdict.latency == {"p50": 0.5, "p99": 1.0, "max": 1.0}


def test_a_registered_address_without_a_mail_fails_as_missing():
    verdict = check(
        registrations=[registration("a@x", 1.0), registration("b@x", 2.0)],
        rows=[row("a@x"), row("b@x", status="failed")],
        accepted=[mail("a@x", 1.5)],
        faults=[],
    )

    assert not verdict.ok
    assert [(m.email, m.status) for m in verdict.missing] == [("b@x", "failed")]


def test_a_user_row_without_a_202_still_owes_a_mail():
    verdict = check(
        registrations=[Registration("a@x", 1.0, 31.0, None, "TimeoutError")],
        rows=[row("a@x", status="pending")],
        accepted=[],
        faults=[],
    )

    assert not verdict.ok
    assert verdict.missing[0].answered is None


def test_a_202_without_a_user_row_is_missing_too():
    verdict = check(
        registrations=[registration("a@x", 1.0)], rows=[], accepted=[], faults=[]
    )

    assert [m.last_error for m in verdict.missing] == ["no user row"]


def test_a_duplicate_with_no_kill_after_the_250_is_outside_the_window():
    verdict = check(
        registrations=[registration("a@x", 1.0)],
        rows=[row("a@x")],
        accepted=[mail("a@x", 2.0), mail("a@x", 30.0, pid=99)],
        faults=[fault(FaultKind.RELAY_DEFER_421, 5.0, 20.0)],
    )

    assert not verdict.ok
    (duplicate,) = verdict.duplicates
    assert duplicate.message_id == "<a@x>"
    assert not duplicate.in_window
    assert "no kill or freeze" in duplicate.explanation


def test_a_kill_of_the_sending_worker_after_the_250_is_the_documented_window():
    verdict = check(
        registrations=[registration("a@x", 1.0)],
        rows=[row("a@x")],
        accepted=[mail("a@x", 2.0), mail("a@x", 30.0, pid=99)],
        faults=[fault(FaultKind.WORKER_KILL, 2.01, 6.0, pid=WORKER)],
    )

    assert verdict.ok
    assert verdict.duplicates[0].in_window


def test_a_kill_stamped_just_before_the_relay_stamped_its_250_is_the_window():
    # The injector stamps the kill before signalling; the relay stamps the 250
    # after reading the worker's last byte, which the worker sent before dying.
    verdict = check(
        registrations=[registration("a@x", 1.0)],
        rows=[row("a@x")],
        accepted=[mail("a@x", 2.0), mail("a@x", 30.0, pid=99)],
        faults=[fault(FaultKind.WORKER_KILL, 1.996, 6.0, pid=WORKER)],
    )

    assert verdict.ok
    assert verdict.duplicates[0].in_window


def test_a_kill_of_another_worker_does_not_excuse_a_duplicate():
    verdict = check(
        registrations=[registration("a@x", 1.0)],
        rows=[row("a@x")],
        accepted=[mail("a@x", 2.0), mail("a@x", 30.0, pid=99)],
        faults=[fault(FaultKind.WORKER_KILL, 2.01, 6.0, pid=WORKER + 1)],
    )

    assert not verdict.ok


def test_a_kill_before_the_250_does_not_excuse_a_duplicate():
    verdict = check(
        registrations=[registration("a@x", 1.0)],
        rows=[row("a@x")],
        accepted=[mail("a@x", 2.0), mail("a@x", 30.0, pid=99)],
        faults=[fault(FaultKind.WORKER_FREEZE, 1.5, 6.0, pid=WORKER)],
    )

    assert not verdict.duplicates[0].in_window


def test_a_second_message_id_to_one_address_is_unexpected():
    other = Accepted("<other>", "a@x", 3.0, 1_700_000_003.0, WORKER)
    verdict = check(
        registrations=[registration("a@x", 1.0)],
        rows=[row("a@x")],
        accepted=[mail("a@x", 2.0), other],
        faults=[],
    )

    assert not verdict.ok
    assert verdict.unexpected == ["a@x: Message-ID <other>, its row has <a@x>"]


def test_recovery_counts_from_the_fault_end_to_the_last_held_mail():
    redis_down = fault(FaultKind.REDIS_DOWN, 10.0, 20.0)
    verdict = check(
        registrations=[
            registration("before@x", 5.0),  # delivered before the fault
            registration("held1@x", 12.0),
            registration("held2@x", 15.0),
            registration("after@x", 25.0),  # committed after it ended
        ],
        rows=[row(e) for e in ("before@x", "held1@x", "held2@x", "after@x")],
        accepted=[
            mail("before@x", 5.2),
            mail("held1@x", 21.0),
            mail("held2@x", 23.5),
            mail("after@x", 40.0),
        ],
        faults=[redis_down],
    )

    (recovery,) = verdict.recoveries
    assert (recovery.held, recovery.seconds, recovery.never_delivered) == (2, 3.5, 0)


def test_overlapping_faults_give_a_held_mail_to_the_last_ending_one():
    relay = fault(FaultKind.RELAY_REFUSE, 10.0, 30.0, number=1)
    kill = fault(FaultKind.WORKER_KILL, 12.0, 18.0, number=2, pid=WORKER)
    verdict = check(
        registrations=[registration("a@x", 11.0), registration("b@x", 20.0)],
        rows=[row("a@x"), row("b@x")],
        accepted=[mail("a@x", 33.0), mail("b@x", 31.0)],
        faults=[relay, kill],
    )

    first, second = verdict.recoveries
    assert (first.held, first.seconds, first.overlapping) == (2, 3.0, [2])
    assert (second.held, second.seconds) == (0, None)
    summary = {s.kind: s for s in by_kind(verdict.recoveries)}
    assert summary[FaultKind.RELAY_REFUSE].worst == 3.0


def test_a_mail_never_delivered_counts_against_the_fault_that_held_it():
    verdict = check(
        registrations=[registration("a@x", 11.0)],
        rows=[row("a@x", status="sending")],
        accepted=[],
        faults=[fault(FaultKind.WORKER_KILL, 12.0, 18.0, pid=WORKER)],
    )

    assert verdict.recoveries[0].never_delivered == 1
    assert not verdict.ok


def test_percentile_is_nearest_rank():
    values = [float(n) for n in range(1, 101)]

    assert (percentile(values, 50), percentile(values, 99)) == (50.0, 99.0)
    assert percentile([], 50) is None


def test_a_mail_later_than_its_longest_fault_plus_30s_fails_the_run():
    outage = fault(FaultKind.RELAY_REFUSE, 10.0, 30.0)  # 20 s
    verdict = check(
        registrations=[
            registration("held@x", 5.0),
            registration("slow@x", 5.0),
            registration("calm@x", 100.0),
        ],
        rows=[row("held@x"), row("slow@x"), row("calm@x")],
        # 49 s and 56 s through a 20 s fault; 31 s through none.
        accepted=[mail("held@x", 54.0), mail("slow@x", 61.0), mail("calm@x", 131.0)],
        faults=[outage],
    )

    assert not verdict.ok
    assert [(late.email, late.bound, late.faults) for late in verdict.late] == [
        ("calm@x", 30.0, []),
        ("slow@x", 50.0, [1]),
    ]


def test_overlapping_faults_bound_a_mail_as_one_fault_and_a_gap_keeps_them_apart():
    redis_down = fault(FaultKind.REDIS_DOWN, 10.0, 30.0)  # 20 s
    relay_stall = fault(FaultKind.RELAY_STALL_SILENT, 25.0, 45.0)  # 20 s, overlapping
    later = fault(FaultKind.RELAY_REFUSE, 50.0, 60.0)  # 10 s, after a gap
    verdict = check(
        registrations=[registration("within@x", 5.0), registration("beyond@x", 5.0)],
        rows=[row("within@x"), row("beyond@x")],
        # 60 s and 74 s through one spell of 35 s (10 to 45): its bound is 65 s.
        accepted=[mail("within@x", 65.0), mail("beyond@x", 79.0)],
        faults=[redis_down, relay_stall, later],
    )

    assert [(late.email, late.bound) for late in verdict.late] == [("beyond@x", 65.0)]


def test_a_process_that_exited_on_its_own_fails_the_run():
    verdict = check(
        registrations=[registration("a@x", 1.0)],
        rows=[row("a@x")],
        accepted=[mail("a@x", 1.5)],
        faults=[],
        exits=["worker0 pid 7: Unrecoverable error: AttributeError(...)"],
    )

    assert not verdict.ok


def test_a_fault_that_could_not_be_applied_fails_the_run():
    verdict = check(
        registrations=[registration("a@x", 1.0)],
        rows=[row("a@x")],
        accepted=[mail("a@x", 1.5)],
        faults=[],
        fault_errors=["#5 worker-sigterm: ProcessLookupError(3, 'No such process')"],
    )

    assert not verdict.ok


def test_throttling_faults_report_the_pace_against_what_the_relay_allowed():
    throttle = fault(FaultKind.RELAY_THROTTLE, 10.0, 20.0, number=1)
    cap = fault(FaultKind.RELAY_CONNECTION_CAP, 30.0, 40.0, number=2)
    outage = fault(FaultKind.RELAY_REFUSE, 50.0, 60.0, number=3)
    emails = [f"u{n}@x" for n in range(80)]
    # 40 answered during the throttle (4/s) and 40 during the cap (4/s); the
    # relay took 45 in the first ten seconds and 38 in the next.
    registrations = [
        registration(email, 10.1 + n * 0.25 if n < 40 else 30.1 + (n - 40) * 0.25)
        for n, email in enumerate(emails)
    ]
    accepted = [mail(f"t{n}@x", 10.0 + n * 0.2) for n in range(45)]
    accepted += [mail(f"c{n}@x", 30.5 + n * 0.25) for n in range(38)]

    paces = check(
        registrations=registrations,
        rows=[row(email) for email in emails],
        accepted=accepted,
        faults=[throttle, cap, outage],
    ).paces

    assert [(p.fault.number, p.accepted, p.offered, p.allowed) for p in paces] == [
        (1, 45, 40, 5.0),
        (2, 38, 40, None),
    ]
    assert [round(p.achieved, 1) for p in paces] == [4.5, 3.8]
    assert [round(p.share, 2) for p in paces] == [0.9, 0.95]
