"""The whole flow through anymail's Postmark backend, against a fake Postmark API.

Real processes: a private redis-server, gunicorn serving the app and the
/anymail/ webhooks, a Celery worker whose EMAIL_BACKEND is anymail's
Postmark backend, pointed at a fake Postmark API (tests/support/esp.py)
that this test process serves. No real ESP is ever called.
"""

import base64
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from mailer.models import Delivery, Suppression, TrackingEvent
from tests.conftest import worker_env
from tests.support import (
    GunicornProcess,
    HttpClient,
    RedisServer,
    WorkerProcess,
    free_port,
    register,
    wait_for_delivery,
    wait_until,
)
from tests.support.esp import TOKEN, FakePostmark, bounce_event, spam_complaint_event

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SECRET = "postmark:esp-flow-secret"


class Stack:
    def __init__(self, *, web: GunicornProcess, api: FakePostmark) -> None:
        self.web = web
        self.api = api
        self.http = HttpClient(f"http://127.0.0.1:{web.port}")

    def register(self, email: str) -> int:
        return register(self.http, email).status_code

    def post_event(self, body: dict, *, secret: str = SECRET) -> int:
        auth = base64.b64encode(secret.encode()).decode()
        request = urllib.request.Request(
            self.http.base_url + "/anymail/postmark/tracking/",
            data=json.dumps(body).encode(),
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Basic {auth}",
            },
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code


@pytest.fixture
def stack(django_db_blocker, tmp_path):
    redis = RedisServer(free_port()).start()
    api = FakePostmark().start()
    with django_db_blocker.unblock():
        env = worker_env(
            REDIS_URL=redis.url,
            EMAIL_BACKEND="anymail.backends.postmark.EmailBackend",
            POSTMARK_SERVER_TOKEN=TOKEN,
            POSTMARK_API_URL=api.url,
            ANYMAIL_WEBHOOK_SECRET=SECRET,
            MAILER_RELAY_PROBE_INTERVAL="0.5",
            RATELIMIT_REGISTER_IP="100000/h",
        )
    web = worker = None
    try:
        web = GunicornProcess(
            env=env, port=free_port(), log_path=tmp_path / "web.log"
        ).start()
        worker = WorkerProcess(
            env=env, name="esp", log_path=tmp_path / "worker.log"
        ).start()
        yield Stack(web=web, api=api)
    finally:
        for process in (worker, web):
            if process is not None:
                process.stop()
        api.stop()
        redis.cleanup()


def test_mail_goes_through_the_esp_and_its_webhooks_feed_the_suppression_list(
    stack,
):
    assert stack.register("ada@example.com") == 202
    welcome = wait_for_delivery(email="ada@example.com", status="sent")
    [mail] = stack.api.accepted_to("ada@example.com")
    assert mail["Metadata"] == {"delivery_id": str(welcome.pk)}
    assert "/activate/" in mail["TextBody"]

    bounce = bounce_event(
        email="ada@example.com", event_id=5501, delivery_id=welcome.pk
    )
    assert stack.post_event(bounce, secret="postmark:wrong") == 400
    assert not Suppression.objects.exists()
    assert stack.post_event(bounce) == 200
    assert stack.post_event(bounce) == 200  # Postmark retries: a replay

    entry = Suppression.objects.get()
    assert (entry.address, entry.reason, entry.source) == (
        "ada@example.com",
        "hard_bounce",
        "webhook",
    )
    [event] = TrackingEvent.objects.all()
    assert event.delivery_id == welcome.pk and event.event_id == "5501"

    assert stack.register("ada@example.com") == 202
    notice = wait_until(
        lambda: (
            Delivery.objects.filter(
                user__email="ada@example.com", kind="account_exists"
            )
            .exclude(status__in=["pending", "sending"])
            .first()
        ),
        timeout=20,
        what="the notice settled",
    )
    assert notice.status == Delivery.Status.SUPPRESSED
    assert stack.api.attempts["ada@example.com"] == 1


def test_a_complaint_suppresses_with_its_reason(stack):
    assert stack.register("annoyed@example.com") == 202
    welcome = wait_for_delivery(email="annoyed@example.com", status="sent")

    complaint = spam_complaint_event(
        email="annoyed@example.com", event_id=77, delivery_id=welcome.pk
    )
    assert stack.post_event(complaint) == 200

    entry = Suppression.objects.get()
    assert (entry.reason, entry.source) == ("complaint", "webhook")


def test_a_recipient_the_esp_calls_inactive_fails_and_is_suppressed(stack):
    stack.api.replies["dead@example.com"] = ["inactive"]

    assert stack.register("dead@example.com") == 202

    row = wait_for_delivery(email="dead@example.com", status="failed")
    assert row.retries == 0 and "inactive" in row.last_error
    entry = Suppression.objects.get()
    assert (entry.address, entry.source) == ("dead@example.com", "esp_api")
    assert stack.api.attempts["dead@example.com"] == 1


def test_a_rate_limited_esp_is_waited_for_without_spending_retries(stack):
    stack.api.replies["busy@example.com"] = ["rate-limited", "server-error"]

    assert stack.register("busy@example.com") == 202

    row = wait_for_delivery(email="busy@example.com", status="sent", timeout=40)
    assert row.retries == 0
    assert stack.api.attempts["busy@example.com"] == 3
    assert len(stack.api.accepted_to("busy@example.com")) == 1
    assert not Suppression.objects.exists()


def test_a_burst_of_webhook_calls_is_stored_once_per_event(stack, capsys):
    """100 calls from 20 threads, one event sent 10 times: 91 events, all 200."""
    bodies = [
        bounce_event(email=f"burst{n}@example.com", event_id=10_000 + n)
        for n in range(90)
    ]
    bodies += [bounce_event(email="twice@example.com", event_id=99)] * 10

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(stack.post_event, bodies))
    elapsed = time.monotonic() - started

    assert answers == [200] * 100
    assert TrackingEvent.objects.count() == 91
    assert Suppression.objects.count() == 91
    with capsys.disabled():
        print(f"\nwebhook burst: 100 calls (20 at once) answered in {elapsed:.2f}s")
