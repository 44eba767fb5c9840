"""What the relay budget tells Prometheus: throttles, limits, connections, line."""

import smtplib

import pytest
from prometheus_client import REGISTRY

from mailer import attempts, budget
from mailer.pool import Pool, pool
from tests import services
from tests.factories import DeliveryFactory

pytestmark = pytest.mark.django_db


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_refused_connection_counts_a_throttle_and_sets_the_learned_limit(
    relay_budget,
):
    relay_budget.script.max_connections = 1
    other = smtplib.SMTP("127.0.0.1", services.SMTP_PORT)
    before = sample("mailer_relay_throttles_total", kind="connections")
    throttled = sample("mailer_deliveries_total", kind="unknown", outcome="throttled")
    try:
        attempts.attempt_delivery(
            delivery_id=DeliveryFactory().pk, task_id="t", retries=0
        )
    finally:
        other.quit()

    assert sample("mailer_relay_throttles_total", kind="connections") == before + 1
    assert (
        sample("mailer_deliveries_total", kind="unknown", outcome="throttled")
        == throttled + 1
    )
    assert sample("mailer_relay_allowed_connections") == 1


def test_the_reaper_reports_open_connections_and_the_limits_in_force(
    relay_budget, settings
):
    settings.MAILER_RELAY_RATE = "14"
    while budget.reserve_send(max_wait=attempts.BUDGET_WAIT).reserved:
        pass  # every turn of the next two seconds is taken
    for place in (1, 2):  # two mails wait in line
        budget.reserve_send(max_wait=attempts.BUDGET_WAIT, place=place)
    mine = Pool()
    held = [mine.checkout(wait=1) for _ in range(2)]
    try:
        mine.reap()
        # Read while both are held: the shared pool's reaper thread, started
        # by earlier tests, sets the same gauges every second from Redis, and
        # would see one connection if it ran between the two QUITs below.
        reported = {
            name: sample(f"mailer_relay_{name}")
            for name in ("open_connections", "allowed_connections", "allowed_rate")
        }
        waiting = sample("mailer_relay_waiting")
    finally:
        for conn in held:
            mine.checkin(conn)
        mine.stop()

    assert reported == {
        "open_connections": 2,
        "allowed_connections": 8,
        "allowed_rate": 14,
    }
    assert waiting == 2


def test_a_budget_wait_is_counted_apart_from_the_relays_throttles(
    relay_budget, settings, monkeypatch
):
    settings.MAILER_RELAY_MAX_CONNECTIONS = "1"
    monkeypatch.setattr(attempts, "BUDGET_WAIT", 0.1)
    held = pool.checkout(wait=1)
    before = sample("mailer_relay_throttles_total", kind="budget")
    relay = sample("mailer_relay_throttles_total", kind="connections")
    try:
        attempts.attempt_delivery(
            delivery_id=DeliveryFactory().pk, task_id="t", retries=0
        )
    finally:
        pool.checkin(held)

    assert sample("mailer_relay_throttles_total", kind="budget") == before + 1
    assert sample("mailer_relay_throttles_total", kind="connections") == relay
