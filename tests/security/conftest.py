import pytest


@pytest.fixture(autouse=True)
def _rate_limits_counted_in_redis(redis_server):
    """Rate limits here are counted in the suite's own redis-server."""
