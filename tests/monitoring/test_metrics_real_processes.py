"""Real processes: what /metrics shows after registrations, a 550 and a stalled relay.

gunicorn with two workers and two Celery worker processes share one
PROMETHEUS_MULTIPROC_DIR, as `make run` and compose run them; each test has
its own redis-server and SMTP port (the session worker would take a share).
The relay refuses one address with 550, then stalls: accepts connections
and never answers, so the next mail waits and its age grows on every scrape.
The unit-tested WelcomeMailsStuck rule is then run by promtool on series
that start from the scraped age and grow at the scraped rate.
"""

import json
import re
import socket
import time
import urllib.error
import urllib.request

import pytest
import yaml

from mailer.models import Delivery
from tests.conftest import worker_env
from tests.monitoring.promtool import MONITORING, run_promtool
from tests.monitoring.scrape import basic_auth, value
from tests.support import (
    GunicornProcess,
    RedisServer,
    SilentSmtpServer,
    SmtpServer,
    WorkerProcess,
    free_port,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

LOGIN = "prometheus:real-processes"
PASSWORD = "correct horse battery staple"
REFUSED = "refused@example.com"


class Stack:
    """gunicorn, two Celery workers, a private Redis and relay port."""

    def __init__(self, tmp_path) -> None:
        self.redis = RedisServer(free_port()).start()
        self.smtp_port = free_port()
        self.smtp = SmtpServer(self.smtp_port).start()
        self.silent: SilentSmtpServer | None = None
        self.metrics_dir = tmp_path / "metrics"
        self.metrics_dir.mkdir()
        self.env = worker_env(
            REDIS_URL=self.redis.url,
            EMAIL_PORT=str(self.smtp_port),
            EMAIL_TIMEOUT="2",
            MAILER_MAX_RETRIES="50",  # the stalled mail stays undelivered
            MAILER_RETRY_BACKOFF="0.2",
            MAILER_RETRY_BACKOFF_MAX="0.5",
            PROMETHEUS_MULTIPROC_DIR=str(self.metrics_dir),
            METRICS_BASIC_AUTH=LOGIN,
            RATELIMIT_REGISTER_IP="100/h",
            RATELIMIT_REGISTER_ADDRESS="1/h",
        )
        self.processes = []
        self.port = free_port()
        self.processes.append(
            GunicornProcess(
                env=self.env, port=self.port, log_path=tmp_path / "web.log"
            ).start()
        )
        for name in ("m1", "m2"):
            self.processes.append(
                WorkerProcess(
                    env=self.env,
                    name=name,
                    concurrency=2,
                    log_path=tmp_path / f"worker-{name}.log",
                ).start()
            )
        wait_until(self._web_answers, timeout=30, what="gunicorn answers")

    def _web_answers(self) -> bool:
        try:
            return self.request("GET", "/healthz")[0] == 200
        except OSError:
            return False

    def request(self, method: str, path: str, body=None, headers=None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            headers={"Content-Type": "application/json", **(headers or {})},
            method=method,
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def register(self, email: str) -> int:
        body = {"email": email, "password": PASSWORD}
        return self.request("POST", "/api/register", body)[0]

    def scrape(self) -> str:
        status, page = self.request(
            "GET", "/metrics", headers={"Authorization": basic_auth(LOGIN)}
        )
        assert status == 200, page
        return page

    def stall_relay(self) -> None:
        """Replace the SMTP server by one that accepts and never answers."""
        self.smtp.stop()
        self.silent = SilentSmtpServer(self.smtp_port).start()

    def stop(self) -> None:
        for process in self.processes:
            process.stop()
        if self.silent is not None:
            self.silent.stop()
        else:
            self.smtp.stop()
        self.redis.cleanup()


@pytest.fixture
def stack(tmp_path):
    running = Stack(tmp_path)
    yield running
    running.stop()


def statuses() -> dict[str, int]:
    found: dict[str, int] = {}
    for status in Delivery.objects.values_list("status", flat=True):
        found[status] = found.get(status, 0) + 1
    return found


def counted(page: str, name: str, **labels: str) -> float:
    return value(page, name, **labels) or 0.0


def test_metrics_count_registrations_sends_a_550_and_age_a_mail_stuck_behind_a_stalled_relay(  # noqa: E501
    stack, tmp_path
):
    stack.smtp.handler.script.replies[REFUSED] = ["550 5.1.1 No such user here"]
    answers = [
        stack.register(email)
        for email in ("ada@example.com", "bob@example.com", "cy@example.com", REFUSED)
    ]
    answers += [stack.register("not-an-address"), stack.register("ada@example.com")]
    assert answers == [202, 202, 202, 202, 400, 429]
    wait_until(
        lambda: statuses() == {"sent": 3, "failed": 1}, timeout=30, what="4 sends"
    )

    page = stack.scrape()

    registrations = "users_registrations_total"
    assert counted(page, registrations, channel="api", answer="accepted") == 4
    assert counted(page, registrations, channel="api", answer="400") == 1
    assert counted(page, registrations, channel="api", answer="429") == 1
    rejections = "users_ratelimit_rejections_total"
    assert counted(page, rejections, scope="register", by="address") == 1
    deliveries = "mailer_deliveries_total"
    assert counted(page, deliveries, kind="welcome", outcome="sent") == 3
    assert counted(page, deliveries, kind="welcome", outcome="failed") == 1
    assert counted(page, "mailer_smtp_replies_total", **{"class": "2xx"}) == 3
    assert counted(page, "mailer_smtp_replies_total", **{"class": "5xx"}) == 1
    assert counted(page, "mailer_delivery_latency_seconds_count", kind="welcome") == 3
    rows = "mailer_outbox_rows"
    assert counted(page, rows, status="sent", kind="welcome") == 3
    assert counted(page, rows, status="failed", kind="welcome") == 1
    assert counted(page, "mailer_outbox_oldest_undelivered_seconds") == 0
    # What this one scrape summed was written by both Celery workers (each
    # imports the task module at start) and at least one gunicorn worker (a
    # gunicorn worker loads the URLconf, and so its metrics, on its first
    # request).
    writers = {
        re.sub(r"^[a-z]+_(?:[a-z]+_)?", "", path.stem)
        for path in stack.metrics_dir.glob("*.db")
    }
    host = socket.gethostname().replace("_", "-")
    celery_workers = {f"{host}-{worker.process.pid}" for worker in stack.processes[1:]}
    assert celery_workers <= writers and len(writers) >= 3, writers

    stack.stall_relay()
    assert stack.register("stuck@example.com") == 202

    def relay_seen_down() -> str | None:
        page = stack.scrape()
        no_answer = sum(
            counted(page, "mailer_smtp_replies_total", **{"class": name})
            for name in ("timeout", "connection")
        )
        # The gauge can read 0 before this mail was tried (a worker that saw
        # an earlier blip and never the recovery): wait for the mail's age too.
        aged = (value(page, "mailer_outbox_oldest_undelivered_seconds") or 0) >= 0.5
        down = value(page, "mailer_relay_up", source="attempts") == 0
        if no_answer and aged and down:
            return page
        return None

    wait_until(relay_seen_down, timeout=30, interval=0.5, what="the stalled relay")
    first, first_at = stack.scrape(), time.monotonic()
    time.sleep(3)
    second, second_at = stack.scrape(), time.monotonic()

    oldest = "mailer_outbox_oldest_undelivered_seconds"
    age1, age2 = value(first, oldest), value(second, oldest)
    assert age1 > 0
    assert age2 - age1 == pytest.approx(second_at - first_at, abs=1.0)
    undelivered = counted(second, rows, status="pending", kind="welcome") + counted(
        second, rows, status="sending", kind="welcome"
    )
    assert undelivered == 1
    assert counted(second, deliveries, kind="welcome", outcome="sent") == 3
    assert counted(second, "mailer_outbox_scrape_error") == 0

    assert_stuck_rule_fires_on(age2, (age2 - age1) / (second_at - first_at), tmp_path)


def assert_stuck_rule_fires_on(age: float, growth: float, tmp_path) -> None:
    """Run alerts.yml on the scraped age, growing at the scraped rate, in promtool.

    Quiet while the age is under 15 minutes, firing 5 minutes after it
    crosses them: the rule the unit tests hold, on the numbers just seen.
    """
    per_minute = round(growth * 60, 3)
    crosses = next(m for m in range(1, 120) if age + per_minute * m > 900)
    firing = 'ALERTS{alertname="WelcomeMailsStuck", alertstate="firing"}'
    test = {
        "rule_files": [str(MONITORING / "alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": "mailer_outbox_oldest_undelivered_seconds"
                        '{job="welcome-web",instance="web:8000"}',
                        "values": f"{age}+{per_minute}x{crosses + 10}",
                    }
                ],
                "promql_expr_test": [
                    {"expr": firing, "eval_time": f"{crosses - 1}m", "exp_samples": []},
                    {
                        "expr": firing,
                        "eval_time": f"{crosses + 6}m",
                        "exp_samples": [
                            {
                                "labels": 'ALERTS{alertname="WelcomeMailsStuck", '
                                'alertstate="firing", severity="page"}',
                                "value": 1,
                            }
                        ],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "stuck_test.yml"
    path.write_text(yaml.safe_dump(test))

    result = run_promtool("test", "rules", str(path), cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
