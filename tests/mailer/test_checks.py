"""System checks on the relay budget's settings: nonsense stops the start."""

import os

import pytest

from mailer.checks import check_relay_budget
from tests.support import WorkerProcess, run_manage


@pytest.mark.parametrize("value", ["0", "-2", "eight", "2.5", ""])
def test_a_connection_cap_that_is_not_a_whole_number_of_at_least_one_is_an_error(
    settings, value
):
    settings.MAILER_RELAY_MAX_CONNECTIONS = value

    errors = check_relay_budget(None)

    assert [error.id for error in errors] == ["mailer.E003"]
    assert "MAILER_RELAY_MAX_CONNECTIONS" in errors[0].msg


@pytest.mark.parametrize("value", ["0", "-1", "fast", "nan", "inf", "1/s"])
def test_a_rate_that_is_not_a_positive_number_is_an_error(settings, value):
    settings.MAILER_RELAY_RATE = value

    errors = check_relay_budget(None)

    assert [error.id for error in errors] == ["mailer.E004"]
    assert "MAILER_RELAY_RATE" in errors[0].msg


@pytest.mark.parametrize(
    ("connections", "rate"), [("8", ""), ("1", "0.5"), (" 3 ", "14")]
)
def test_sensible_budgets_pass(settings, connections, rate):
    settings.MAILER_RELAY_MAX_CONNECTIONS = connections
    settings.MAILER_RELAY_RATE = rate

    assert check_relay_budget(None) == []


def test_a_worker_with_a_nonsense_rate_in_its_environment_refuses_to_start():
    env = {
        **os.environ,
        "MAILER_RELAY_RATE": "fast",
        "MAILER_RELAY_MAX_CONNECTIONS": "0",
    }

    result = run_manage("check", env=env)

    assert result.returncode != 0
    assert "mailer.E003" in result.stderr and "mailer.E004" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_worker_with_a_nonsense_connection_cap_exits_before_taking_mail(
    tmp_path, redis_server
):
    env = {**os.environ, "MAILER_RELAY_MAX_CONNECTIONS": "lots"}
    log = tmp_path / "worker.log"
    worker = WorkerProcess(env=env, name="bad", log_path=log)

    with pytest.raises(AssertionError, match="exited early"):
        worker.start()
    code = worker.process.returncode

    assert code == 1
    assert "mailer.E003" in log.read_text()
