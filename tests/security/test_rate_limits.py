"""Rate limits per client IP and per address, counted in the suite's redis-server."""

import json
import os
import socket
import threading
import time

import pytest
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured

from mailer.models import Delivery
from tests.support import free_port, register, run_manage
from users.models import User
from users.ratelimit import CACHE_ALIAS, Rate, parse_rate

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


def resend(client, email, **extra):
    body = json.dumps({"email": email})
    return client.post(
        "/api/activation/resend", body, content_type="application/json", **extra
    )


def assert_limited(response, *, period: int):
    assert response.status_code == 429
    retry_after = int(response["Retry-After"])
    assert 1 <= retry_after <= period
    return retry_after


def test_registrations_over_the_ip_limit_get_429_with_retry_after(client, settings):
    settings.RATELIMIT_REGISTER_IP = "3/h"

    answers = [register(client, f"p{n}@example.com").status_code for n in range(3)]
    fourth = register(client, "p3@example.com")

    assert answers == [202, 202, 202]
    assert_limited(fourth, period=3600)
    assert "Try again in" in fourth.json()["errors"]["__all__"][0]
    assert not User.objects.filter(email="p3@example.com").exists()


def test_invalid_requests_count_against_the_ip_limit(client, settings):
    settings.RATELIMIT_REGISTER_IP = "2/m"

    bad = [register(client, "not-an-address").status_code for _ in range(2)]

    assert bad == [400, 400]
    assert_limited(register(client, "ada@example.com"), period=60)


def test_other_clients_are_not_limited_by_one_noisy_client(client, settings):
    settings.RATELIMIT_REGISTER_IP = "1/h"
    register(client, "a@example.com", REMOTE_ADDR="192.0.2.1")

    noisy = register(client, "b@example.com", REMOTE_ADDR="192.0.2.1")
    other = register(client, "c@example.com", REMOTE_ADDR="192.0.2.2")

    assert noisy.status_code == 429
    assert other.status_code == 202


def test_one_address_is_limited_across_clients_and_letter_cases(client, settings):
    settings.RATELIMIT_REGISTER_ADDRESS = "2/h"
    addresses = ["ada@example.com", "ADA@example.com", "Ada@Example.COM"]

    answers = [
        register(client, email, REMOTE_ADDR=f"198.51.100.{n}")
        for n, email in enumerate(addresses)
    ]

    assert [a.status_code for a in answers] == [202, 202, 429]
    assert_limited(answers[2], period=3600)
    # The third attempt never reached the service: no third notice or account.
    assert User.objects.count() == 1
    assert Delivery.objects.count() == 2


def test_the_form_shows_a_429_page_with_retry_after(client, settings):
    settings.RATELIMIT_REGISTER_IP = "1/h"
    client.post("/register/", {"email": "a@example.com", "password": PASSWORD})

    response = client.post(
        "/register/", {"email": "b@example.com", "password": PASSWORD}
    )

    assert_limited(response, period=3600)
    assert b"Too many attempts" in response.content
    assert not User.objects.filter(email="b@example.com").exists()


def test_resend_is_limited_per_ip_and_per_address(client, settings):
    settings.RATELIMIT_RESEND_IP = "3/h"
    settings.RATELIMIT_RESEND_ADDRESS = "1/h"

    first = resend(client, "ada@example.com")
    same_address = resend(client, "ADA@example.com")
    others = [resend(client, f"x{n}@example.com").status_code for n in range(2)]

    assert first.status_code == 202
    assert_limited(same_address, period=3600)
    assert others == [202, 429]  # the IP's third and fourth request


def test_resend_form_is_limited(client, settings):
    settings.RATELIMIT_RESEND_IP = "1/h"
    client.post("/activate/resend/", {"email": "a@example.com"})

    response = client.post("/activate/resend/", {"email": "b@example.com"})

    assert_limited(response, period=3600)


def test_a_forged_x_forwarded_for_does_not_escape_the_limit_by_default(
    client, settings
):
    settings.RATELIMIT_REGISTER_IP = "1/h"
    register(client, "a@example.com", HTTP_X_FORWARDED_FOR="203.0.113.1")

    response = register(client, "b@example.com", HTTP_X_FORWARDED_FOR="203.0.113.2")

    assert response.status_code == 429


def test_behind_a_trusted_proxy_the_client_is_the_entry_the_proxy_added(
    client, settings
):
    settings.TRUSTED_PROXY_COUNT = 1
    settings.RATELIMIT_REGISTER_IP = "1/h"
    proxy = {"REMOTE_ADDR": "10.0.0.5"}
    register(client, "a@example.com", HTTP_X_FORWARDED_FOR="203.0.113.1", **proxy)

    # A client that puts a fake address in front is still 203.0.113.1.
    spoofed = register(
        client,
        "b@example.com",
        HTTP_X_FORWARDED_FOR="192.0.2.99, 203.0.113.1",
        **proxy,
    )
    another = register(
        client, "c@example.com", HTTP_X_FORWARDED_FOR="203.0.113.2", **proxy
    )

    assert spoofed.status_code == 429
    assert another.status_code == 202


def test_the_limit_holds_across_processes(client, settings, redis_server):
    settings.RATELIMIT_REGISTER_IP = "2/h"
    # Another process (as another gunicorn worker would) counts two hits
    # for this client's address in the same Redis.
    script = (
        "from django.test import RequestFactory\n"
        "from users import ratelimit\n"
        "request = RequestFactory().post('/api/register', REMOTE_ADDR='192.0.2.7')\n"
        "for _ in range(2):\n"
        "    ratelimit.limit_client_ip(request, scope='register')\n"
    )
    env = dict(os.environ, RATELIMIT_REGISTER_IP="2/h")
    done = run_manage("shell", "-c", script, env=env)
    assert done.returncode == 0, done.stderr

    response = register(client, "ada@example.com", REMOTE_ADDR="192.0.2.7")

    assert response.status_code == 429
    assert redis_server.client().keys("*ratelimit:register:ip:*")


def test_limits_fail_open_and_log_when_redis_is_unreachable(client, settings, caplog):
    closed_port = free_port()
    settings.CACHES = {
        **settings.CACHES,
        CACHE_ALIAS: {
            **settings.CACHES[CACHE_ALIAS],
            "LOCATION": f"redis://127.0.0.1:{closed_port}/0",
        },
    }
    settings.RATELIMIT_REGISTER_IP = "1/h"

    started = time.monotonic()
    answers = [register(client, f"p{n}@example.com").status_code for n in range(3)]
    elapsed = time.monotonic() - started

    assert answers == [202, 202, 202]
    assert User.objects.count() == 3
    assert elapsed < 3, f"three registrations took {elapsed:.2f}s"  # no retry loop
    assert "Rate limit register/ip not checked: cache unavailable" in caplog.text


def test_a_frozen_redis_delays_registration_by_the_socket_timeout_only(
    client, settings
):
    # A listener that accepts connections and never answers, like a frozen Redis.
    frozen = socket.socket()
    frozen.bind(("127.0.0.1", 0))
    frozen.listen(16)
    accepted = []
    stop = threading.Event()

    def accept_and_hold():
        frozen.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(frozen.accept()[0])
            except TimeoutError:
                continue

    holder = threading.Thread(target=accept_and_hold, daemon=True)
    holder.start()
    settings.CACHES = {
        **settings.CACHES,
        CACHE_ALIAS: {
            **settings.CACHES[CACHE_ALIAS],
            "LOCATION": f"redis://127.0.0.1:{frozen.getsockname()[1]}/0",
        },
    }
    try:
        started = time.monotonic()
        response = register(client, "ada@example.com")
        elapsed = time.monotonic() - started
    finally:
        caches[CACHE_ALIAS].close()
        stop.set()
        holder.join(5)
        for connection in accepted:
            connection.close()
        frozen.close()

    assert response.status_code == 202
    assert accepted, "the registration never tried the frozen Redis"
    # Two checks (IP, address), each bounded by the 0.5 s socket timeout.
    assert elapsed < 5, f"registration took {elapsed:.2f}s"


@pytest.mark.parametrize(
    ("value", "rate"),
    [("5/h", Rate(5, 3600)), ("10/m", Rate(10, 60)), ("1/s", Rate(1, 1)), ("", None)],
)
def test_rates_are_read_from_settings_text(value, rate):
    assert parse_rate(value) == rate


@pytest.mark.parametrize("value", ["5", "5/hour", "x/h", "-1/h", "5/h/"])
def test_a_malformed_rate_is_a_configuration_error(value):
    with pytest.raises(ImproperlyConfigured):
        parse_rate(value)
