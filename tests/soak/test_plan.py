"""The injector's plan: replayable from its seed, one fault at a time per part."""

import pytest

from tests.soak.faults import (
    FaultKind,
    available_kinds,
    exit_reason,
    part_of,
    plan_faults,
)

KINDS = available_kinds(postgres=True)


def test_the_same_seed_plans_the_same_faults():
    first = plan_faults(seed=358, seconds=300, warmup=10, kinds=KINDS)

    assert first == plan_faults(seed=358, seconds=300, warmup=10, kinds=KINDS)
    assert first != plan_faults(seed=359, seconds=300, warmup=10, kinds=KINDS)


@pytest.mark.parametrize("seed", range(20))
def test_faults_on_one_part_never_overlap_and_all_end_before_the_load(seed):
    plan = plan_faults(seed=seed, seconds=180, warmup=10, kinds=KINDS)

    assert [f.number for f in plan] == list(range(1, len(plan) + 1))
    assert [f.at for f in plan] == sorted(f.at for f in plan)
    assert all(10 <= f.at and f.at + f.hold <= 175 for f in plan)
    ends: dict[str, float] = {}
    for fault in plan:
        part = part_of(fault.kind, fault.slot)
        assert fault.at >= ends.get(part, 0.0)
        ends[part] = fault.at + fault.hold


def test_postgres_faults_only_on_postgres_and_unknown_kinds_refused():
    assert FaultKind.POSTGRES_KILL not in available_kinds(postgres=False)
    with pytest.raises(ValueError, match="unknown fault kinds: worker-nap"):
        available_kinds(postgres=True, only=("worker-nap",))
    with pytest.raises(ValueError, match="leaves no fault"):
        available_kinds(postgres=False, only=("postgres-kill-backends",))


def test_exit_reason_prefers_the_unrecoverable_error_line():
    log = "started\n[..: CRITICAL/MainProcess] Unrecoverable error: boom\nTraceback\n"

    assert exit_reason(log).endswith("Unrecoverable error: boom")
    assert exit_reason("one\ntwo\n") == "two"
