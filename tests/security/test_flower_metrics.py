"""What Flower answers without credentials: the README's advice rests on this."""

import base64
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests.support import ROOT, stop_process, wait_until

pytestmark = pytest.mark.integration


def get(url: str, *, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(auth.encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def test_flower_ui_needs_auth_but_metrics_answer_anyone(redis_server, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(
        os.environ,
        FLOWER_BASIC_AUTH="ops:correct-horse",
        FLOWER_PORT=str(port),
        DJANGO_DEBUG="0",
    )
    log = (tmp_path / "flower.log").open("wb")
    flower = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_app", "flower"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: get(f"{base}/healthcheck") == 200, timeout=30, what="flower")

        assert get(f"{base}/") == 401
        assert get(f"{base}/", auth="ops:correct-horse") == 200
        assert get(f"{base}/api/workers") == 401
        # Flower 2.2 serves Prometheus metrics without auth: keep the port
        # private and let only the scraper reach /metrics (README, "Security").
        assert get(f"{base}/metrics") == 200
    finally:
        stop_process(flower)
        log.close()
