"""Rate limits per client IP and per address, counted in Redis across web workers.

Fixed windows aligned to the clock: a limit of "5/h" allows five hits between
10:00 and 11:00, and a client refused at 10:40 is told to retry in 20 minutes.
When Redis cannot be reached the check fails open and logs: refusing every
registration during a cache outage would be worse, and the mails a person can
trigger repeatedly are also limited in the database (MAILER_*_INTERVAL).
"""

import logging
import math
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from django.utils.crypto import salted_hmac

from users.metrics import record_rate_limited

logger = logging.getLogger(__name__)

CACHE_ALIAS = "ratelimit"
PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class RateLimited(Exception):
    """Too many hits for one key in the current window."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"rate limited; retry after {retry_after}s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class Rate:
    count: int
    period: int


def parse_rate(value: str) -> Rate | None:
    """Read "N/s", "N/m", "N/h" or "N/d"; None for an empty value (no limit)."""
    if not value:
        return None
    count, _, unit = value.partition("/")
    if count.isdigit() and unit in PERIODS:
        return Rate(int(count), PERIODS[unit])
    raise ImproperlyConfigured(f"Not a rate: {value!r} (expected e.g. '5/h').")


def client_ip(request: HttpRequest) -> str:
    """The client's address: REMOTE_ADDR, or X-Forwarded-For behind trusted proxies.

    With TRUSTED_PROXY_COUNT = n, each trusted proxy appended one entry, so the
    client is the n-th entry from the right; anything left of it is what the
    client itself sent and proves nothing.
    """
    proxies = settings.TRUSTED_PROXY_COUNT
    remote = request.META.get("REMOTE_ADDR", "")
    if proxies <= 0:
        return remote
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    if len(hops) < proxies:
        return remote
    return hops[-proxies]


def limit_client_ip(request: HttpRequest, *, scope: str) -> None:
    """Count a hit for the request's client IP; raise RateLimited over the limit."""
    _hit(scope=scope, by="ip", value=client_ip(request))


def limit_address(email: str, *, scope: str) -> None:
    """Count a hit for an address in any letter case; raise RateLimited over it."""
    _hit(scope=scope, by="address", value=email.strip().lower())


def _hit(*, scope: str, by: str, value: str) -> None:
    rate = parse_rate(getattr(settings, f"RATELIMIT_{scope.upper()}_{by.upper()}"))
    if rate is None:
        return
    now = time.time()
    window = int(now // rate.period)
    retry_after = max(1, math.ceil((window + 1) * rate.period - now))
    # Keyed by a keyed hash: Redis never holds addresses or IPs in clear.
    digest = salted_hmac("users.ratelimit", value, algorithm="sha256").hexdigest()
    key = f"ratelimit:{scope}:{by}:{digest[:32]}:{rate.period}:{window}"
    try:
        count = _increment(key, timeout=retry_after + 5)
    except Exception:  # noqa: BLE001 - any cache failure: fail open, see module doc
        logger.warning(
            "Rate limit %s/%s not checked: cache unavailable", scope, by, exc_info=True
        )
        return
    if count > rate.count:
        record_rate_limited(scope=scope, by=by)
        raise RateLimited(retry_after)


def _increment(key: str, *, timeout: int) -> int:
    cache = caches[CACHE_ALIAS]
    if cache.add(key, 1, timeout=timeout):
        return 1
    try:
        return cache.incr(key)
    except ValueError:  # expired between add and incr: a new window began
        cache.add(key, 1, timeout=timeout)
        return 1
