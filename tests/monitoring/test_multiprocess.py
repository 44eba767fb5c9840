"""Counts from several processes sharing PROMETHEUS_MULTIPROC_DIR add up on /metrics."""

import json
import socket

import pytest

from tests.conftest import worker_env
from tests.monitoring.scrape import value
from tests.support import run_manage

pytestmark = pytest.mark.django_db(transaction=True)

LOGIN = "prometheus:sum-check"


def in_process(code: str, *, directory) -> str:
    """Run `code` in a fresh Django process writing metrics to `directory`."""
    env = worker_env(PROMETHEUS_MULTIPROC_DIR=str(directory), METRICS_BASIC_AUTH=LOGIN)
    result = run_manage("shell", "-c", code, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def record(directory, *, sent: int, refused: int, relay_up: bool, exits: bool) -> None:
    """One process: `sent` sent mails, `refused` 5xx failures, a relay state."""
    in_process(
        "from mailer import metrics\n"
        f"for _ in range({sent}):\n"
        "    metrics.record_attempt(kind='welcome', outcome='sent',"
        " smtp_class='2xx', duration=0.01, latency=0.3)\n"
        f"for _ in range({refused}):\n"
        "    metrics.record_attempt(kind='welcome', outcome='failed',"
        " smtp_class='5xx', duration=0.02)\n"
        f"metrics.record_relay_state(up={relay_up})\n"
        # Another program's metric in the same directory (Flower's, say).
        "import prometheus_client\n"
        "prometheus_client.Counter('flower_events', 'Flower events.').inc()\n"
        + ("metrics.drop_live_gauges()\n" if exits else ""),
        directory=directory,
    )


def scrape(directory) -> str:
    out = in_process(
        "import json; from django.test import Client; "
        "from tests.monitoring.scrape import basic_auth; "
        "r = Client().get('/metrics', HTTP_HOST='localhost', "
        f"HTTP_AUTHORIZATION=basic_auth({LOGIN!r})); "
        "print(json.dumps([r.status_code, r.content.decode()]))",
        directory=directory,
    )
    status, page = json.loads(out.strip().splitlines()[-1])
    assert status == 200
    return page


def test_counts_from_every_process_are_summed_on_one_scrape(tmp_path):
    record(tmp_path, sent=3, refused=1, relay_up=True, exits=False)
    record(tmp_path, sent=5, refused=0, relay_up=True, exits=False)
    record(tmp_path, sent=0, refused=2, relay_up=False, exits=True)

    page = scrape(tmp_path)

    deliveries = "mailer_deliveries_total"
    assert value(page, deliveries, kind="welcome", outcome="sent") == 8
    assert value(page, deliveries, kind="welcome", outcome="failed") == 3
    assert value(page, "mailer_smtp_replies_total", **{"class": "5xx"}) == 3
    assert value(page, "mailer_attempt_duration_seconds_count", outcome="sent") == 8
    assert value(page, "mailer_delivery_latency_seconds_sum", kind="welcome") == (
        pytest.approx(8 * 0.3)
    )
    # The process that saw the relay down has exited: its state is gone, the
    # two that saw it up remain.
    assert value(page, "mailer_relay_up", source="breaker") == 1
    assert "flower_events" not in page


def test_a_live_process_that_sees_the_relay_down_pulls_the_gauge_to_zero(tmp_path):
    record(tmp_path, sent=1, refused=0, relay_up=True, exits=False)
    record(tmp_path, sent=0, refused=0, relay_up=False, exits=False)

    assert value(scrape(tmp_path), "mailer_relay_up", source="breaker") == 0


def test_metric_files_are_named_by_host_and_pid(tmp_path):
    record(tmp_path, sent=1, refused=0, relay_up=True, exits=False)

    host = socket.gethostname().replace("_", "-")
    names = [path.name for path in tmp_path.iterdir()]
    assert names and all(name.count("_") <= 2 for name in names)
    assert any(name.startswith("counter_" + host + "-") for name in names), names
