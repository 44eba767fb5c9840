"""`GET /healthz`: does this process reach its database and broker in time?"""

import logging
from concurrent.futures import ThreadPoolExecutor, wait

from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe

from mailer.dispatch import check_broker
from mailer.selectors import oldest_undelivered_age

logger = logging.getLogger(__name__)

# Checks run here so a hung database or broker costs the request a timeout,
# not a worker; a check stuck past its timeout keeps its thread, and once
# every thread is stuck the next checks time out at once.
_checks = ThreadPoolExecutor(max_workers=4, thread_name_prefix="healthz")


# Read-only, no session: without the exemption an unsafe method got CSRF's
# 403 page instead of the 405 the API contract documents (schemathesis).
@csrf_exempt
@never_cache
@require_safe
def healthz(request):
    """Answer 200 when the database and broker respond, else 503 naming them.

    Never shows an error text or a URL: only "ok", "unavailable" or "timeout".
    """
    timeout = settings.HEALTHZ_TIMEOUT
    database = _checks.submit(_check_database)
    broker = _checks.submit(
        check_broker, timeout=timeout, url=settings.CELERY_BROKER_URL
    )
    wait([database, broker], timeout=timeout + 0.5)
    body = {
        "database": _outcome(database, "database"),
        "broker": _outcome(broker, "broker"),
        "oldest_undelivered_seconds": (
            database.result() if _answered(database) else None
        ),
    }
    healthy = body["database"] == "ok" and body["broker"] == "ok"
    return JsonResponse(body, status=200 if healthy else 503)


def _check_database() -> float | None:
    """Run a query on this thread's own connection; return the outbox's lag."""
    try:
        return oldest_undelivered_age()
    finally:
        connection.close()


def _answered(future) -> bool:
    return future.done() and future.exception() is None


def _outcome(future, name: str) -> str:
    if not future.done():
        logger.warning("healthz: %s did not answer in time", name)
        return "timeout"
    error = future.exception()
    if error is not None:
        logger.warning("healthz: %s unavailable: %s", name, type(error).__name__)
        return "unavailable"
    return "ok"
