"""A real Flower process watching the real worker: auth, states, no personal data."""

import base64
import json
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mailer.models import Delivery
from mailer.tasks import sweep_stale_deliveries
from tests.conftest import worker_env
from tests.support import (
    ROOT,
    free_port,
    register,
    stop_process,
    wait_for_delivery,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

LOGIN = "ops:flower-test-pass"


class FlowerProcess:
    """`celery -A celery_app flower` on a free port, with flowerconfig.py."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.env = dict(env, FLOWER_PORT=str(self.port), FLOWER_ADDRESS="127.0.0.1")
        self.log_path = Path(tempfile.mkstemp(prefix="flower-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None

    def start(self) -> "FlowerProcess":
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_app", "flower"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_until(self._listening, timeout=30, what="Flower listening")
        return self

    def _listening(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"Flower exited:\n{self.log()}")
        try:
            return self.get("/healthcheck", auth=None)[0] == 200
        except OSError:
            return False

    def get(self, path: str, *, auth: str | None = LOGIN) -> tuple[int, bytes]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        if auth:
            token = base64.b64encode(auth.encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def tasks(self) -> dict:
        status, body = self.get("/api/tasks")
        assert status == 200, body
        return json.loads(body)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None
        self.log_path.unlink(missing_ok=True)


@pytest.fixture
def flower(celery_worker):
    """Flower on the suite's Redis, seeing events from the session worker."""
    flower = FlowerProcess(worker_env(FLOWER_BASIC_AUTH=LOGIN)).start()
    try:
        # Flower only sees events sent after it connected: probe until it does.
        def sees_a_probe() -> bool:
            sweep_stale_deliveries.delay()
            return wait_until_or_false(
                lambda: any(
                    task["name"] == sweep_stale_deliveries.name
                    for task in flower.tasks().values()
                ),
                timeout=2,
            )

        wait_until(sees_a_probe, timeout=40, interval=0, what="Flower seeing tasks")
        yield flower
    finally:
        flower.stop()


def wait_until_or_false(predicate, *, timeout: float) -> bool:
    try:
        return bool(wait_until(predicate, timeout=timeout, interval=0.2))
    except AssertionError:
        return False


def test_flower_answers_401_without_or_with_wrong_credentials(flower):
    assert flower.get("/api/tasks", auth=None)[0] == 401
    assert flower.get("/api/tasks", auth="ops:wrong")[0] == 401
    assert flower.get("/", auth=None)[0] == 401


def test_flower_lists_each_send_with_its_state_and_only_the_outbox_id(
    flower, client, smtp
):
    smtp.script.replies["bounce@example.com"] = ["550 5.1.1 Mailbox does not exist"]
    for email in ("hello@example.com", "bounce@example.com"):
        register(client, email)
    sent = wait_for_delivery(email="hello@example.com", status=Delivery.Status.SENT)
    failed = wait_for_delivery(
        email="bounce@example.com", status=Delivery.Status.FAILED
    )

    def states():
        tasks = flower.tasks()
        return {
            task_id: tasks[task_id]["state"]
            for task_id in (sent.task_id, failed.task_id)
            if task_id in tasks
        }

    wait_until(
        lambda: states() == {sent.task_id: "SUCCESS", failed.task_id: "FAILURE"},
        timeout=20,
        what=f"Flower showing SUCCESS and FAILURE, last seen {states()}",
    )
    tasks = flower.tasks()
    for row in (sent, failed):
        task = tasks[row.task_id]
        assert task["name"] == "mailer.tasks.send_welcome_email"
        assert task["args"] in {f"[{row.pk}]", f"({row.pk},)"}
        assert task["kwargs"] == "{}"
    assert "550" in tasks[failed.task_id]["exception"]
    shown = json.dumps(tasks)
    assert "@example.com" not in shown


def test_flower_refuses_to_start_without_auth_when_debug_is_off(redis_server):
    env = worker_env(DJANGO_DEBUG="0", FLOWER_PORT=str(free_port()))
    env.pop("FLOWER_BASIC_AUTH", None)

    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "celery_app", "flower"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0
    assert "Flower refuses to start without auth" in result.stderr + result.stdout
