import pytest

from tests.conftest import worker_env
from tests.support import GunicornProcess, free_port, wait_until


def _answers(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="session")
def live_web(django_db_setup, django_db_blocker, redis_server, tmp_path_factory):
    """A real gunicorn (two workers) on the suite's database and Redis.

    Rate limits are off so a fuzzing run is the same every time: the 429
    answer is held to the contract by tests/api/test_contract.py instead.
    """
    with django_db_blocker.unblock():
        env = worker_env(
            RATELIMIT_REGISTER_IP="",
            RATELIMIT_REGISTER_ADDRESS="",
            RATELIMIT_RESEND_IP="",
            RATELIMIT_RESEND_ADDRESS="",
        )
    port = free_port()
    web = GunicornProcess(
        env=env, port=port, log_path=tmp_path_factory.mktemp("api") / "web.log"
    ).start()
    base = f"http://127.0.0.1:{port}"
    wait_until(
        lambda: _answers(f"{base}/api/openapi.json"), timeout=30, what="gunicorn"
    )
    yield base, web
    web.stop()
