"""A short soak in the suite: a minute of load, a fixed seed, the shipped defaults.

The same run as `make soak`, shorter; its report goes to a temporary file.
"""

import os

import pytest

from tests.soak.config import config_from_environment, parse_overrides
from tests.soak.faults import THROTTLE_KINDS, FaultKind
from tests.soak.run import run_soak

# Drawn with these kinds, it kills a worker, freezes another, stops Redis and
# breaks the relay twice (defer-421, stall), two of them overlapping. The
# throttling kinds came later: left out, so the seed keeps drawing that plan.
SEED = 284
KINDS = tuple(
    k.value
    for k in FaultKind
    if k is not FaultKind.POSTGRES_KILL and k not in THROTTLE_KINDS
)

# Development only: run it with overrides, e.g. the soak's --fast set.
DEV_OVERRIDES = os.environ.get("SOAK_TEST_ENV_OVERRIDES", "")

pytestmark = [
    pytest.mark.faults,
    # Signal method: the timeout raises in this thread, so the run's finally
    # block still stops every process it started.
    pytest.mark.timeout(480, method="signal"),
]


def test_short_soak_loses_no_mail_and_duplicates_only_in_the_window(tmp_path):
    config = config_from_environment(
        {"DATABASE_URL": os.environ.get("DATABASE_URL", "")},
        seed=SEED,
        minutes=1.0,
        kinds=KINDS,
        drain_timeout=120.0,
        settle=5.0,
        overrides=parse_overrides(DEV_OVERRIDES),
        report_path=tmp_path / "SOAK.md",
    )

    outcome = run_soak(config)
    config.report_path.write_text(outcome.report)

    verdict = outcome.verdict
    report = f"report: {config.report_path}, logs and report kept in {outcome.log_dir}"
    assert verdict.registered > 500, report
    assert [m.email for m in verdict.missing] == [], report
    assert [d.message_id for d in verdict.duplicates if not d.in_window] == [], report
    assert verdict.unexpected == [], report
    assert verdict.exits == [], report
    assert verdict.fault_errors == [], report  # every fault really happened
    assert verdict.late == [], report
    assert verdict.ok
