"""`GET /metrics`: every process's metrics plus the outbox, read at scrape time.

Behind HTTP basic auth (METRICS_BASIC_AUTH, `user:password`). In debug an
unset login leaves the page open; outside debug it refuses every scrape.
"""

import base64
import binascii
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from mailer import metrics as mailer_metrics  # noqa: F401 - defines the metrics
from mailer.models import Delivery, Suppression
from mailer.selectors import oldest_undelivered_age
from project.prometheus import multiproc_dir
from users import metrics as users_metrics  # noqa: F401 - defines the metrics

logger = logging.getLogger(__name__)

# The outbox is read on a thread of its own so a hung database costs a
# scrape HEALTHZ_TIMEOUT, not a gunicorn worker. Daemon threads, so one stuck
# in a connect never holds up the process's exit; at most this many at once,
# then scrapes report the error without trying.
MAX_STUCK_READS = 2
_reads = threading.BoundedSemaphore(MAX_STUCK_READS)


@dataclass(frozen=True)
class OutboxSnapshot:
    """Outbox rows counted by (status, kind), and the oldest undelivered age."""

    rows: dict[tuple[str, str], int]
    oldest_undelivered_seconds: float
    suppressions: dict[str, int] = field(default_factory=dict)  # by reason


@csrf_exempt  # read-only: answer other methods 405, not CSRF's 403
@never_cache
@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    """Answer Prometheus' scrape in its text format, or 401 without the login."""
    if not _authorized(request):
        response = HttpResponse("Authentication required.\n", status=401)
        response["WWW-Authenticate"] = 'Basic realm="metrics", charset="UTF-8"'
        return response
    # The 0.0.4 text format: what every Prometheus 2.x (Debian's 2.42) reads.
    return HttpResponse(
        generate_latest(_scrape_registry()), content_type=CONTENT_TYPE_PLAIN_0_0_4
    )


def _authorized(request: HttpRequest) -> bool:
    """Check the request's basic-auth login against METRICS_BASIC_AUTH."""
    expected = settings.METRICS_BASIC_AUTH
    if not expected:
        if not settings.DEBUG:
            logger.error("GET /metrics refused: METRICS_BASIC_AUTH is not set")
        return settings.DEBUG
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return False
    return secrets.compare_digest(given, expected.encode())


def _scrape_registry() -> CollectorRegistry:
    """A registry for one scrape: the processes' metrics and the outbox's."""
    registry = CollectorRegistry(auto_describe=False)
    directory = multiproc_dir()
    if directory:
        registry.register(_OwnMetrics(MultiProcessCollector(None, path=directory)))
    else:
        registry.register(_ThisProcess())
    registry.register(OutboxCollector())
    return registry


# Other programs of the host may share the directory (Flower under `make run`
# writes its own metrics there, which Prometheus scrapes from Flower).
OWN_PREFIXES = ("mailer_", "users_")


class _OwnMetrics(Collector):
    """The service's own families from another collector, nothing else."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def collect(self) -> Iterator:
        for family in self.collector.collect():
            if family.name.startswith(OWN_PREFIXES):
                yield family


class _ThisProcess(Collector):
    """This process's default registry (runserver, tests): no other process."""

    def collect(self) -> Iterator:
        yield from REGISTRY.collect()


class OutboxCollector(Collector):
    """Outbox gauges read from the database when Prometheus scrapes.

    Reports `mailer_outbox_scrape_error 1` and no outbox gauges when the
    database fails or does not answer within HEALTHZ_TIMEOUT.
    """

    def collect(self) -> Iterator:
        started = time.monotonic()
        snapshot = read_outbox_within(settings.HEALTHZ_TIMEOUT)
        if snapshot is not None:
            yield from _outbox_families(snapshot)
        error = GaugeMetricFamily(
            "mailer_outbox_scrape_error",
            "1 when the outbox could not be read for this scrape (database down "
            "or slower than HEALTHZ_TIMEOUT), else 0.",
        )
        error.add_metric([], 0 if snapshot is not None else 1)
        yield error
        duration = GaugeMetricFamily(
            "mailer_outbox_scrape_duration_seconds",
            "Time this scrape spent reading the outbox.",
        )
        duration.add_metric([], time.monotonic() - started)
        yield duration


def read_outbox_within(timeout: float) -> OutboxSnapshot | None:
    """Read the outbox on a reader thread; None on any error or past `timeout`."""
    if not _reads.acquire(blocking=False):
        logger.warning("metrics: earlier outbox reads are still stuck; not reading")
        return None
    outcome: dict = {}
    done = threading.Event()
    thread = threading.Thread(
        target=_read_into, args=(outcome, done), name="metrics-outbox", daemon=True
    )
    thread.start()
    if not done.wait(timeout):
        logger.warning("metrics: the outbox did not answer within %ss", timeout)
        return None
    if "error" in outcome:
        name = type(outcome["error"]).__name__
        logger.warning("metrics: the outbox could not be read: %s", name)
        return None
    return outcome["snapshot"]


def _read_into(outcome: dict, done: threading.Event) -> None:
    """Run `_read_outbox` on this thread; put its snapshot or error in `outcome`."""
    try:
        outcome["snapshot"] = _read_outbox()
    except Exception as error:  # noqa: BLE001 - any failure is the error metric
        outcome["error"] = error
    finally:
        _reads.release()
        done.set()


def _read_outbox() -> OutboxSnapshot:
    """Count rows by status and kind and age the oldest undelivered mail."""
    try:
        counted = (
            Delivery.objects.order_by()
            .values_list("status", "kind")
            .annotate(rows=Count("*"))  # SQLite: count(id) reads every row
        )
        rows = {(status, kind): n for status, kind, n in counted}
        return OutboxSnapshot(
            rows=rows,
            oldest_undelivered_seconds=oldest_undelivered_age() or 0.0,
            suppressions=_count_suppressions(),
        )
    finally:
        connection.close()


def _count_suppressions() -> dict[str, int]:
    by_reason = Suppression.objects.order_by().values_list("reason")
    return dict(by_reason.annotate(rows=Count("*")))


def _outbox_families(snapshot: OutboxSnapshot) -> Iterator[GaugeMetricFamily]:
    """Every (status, kind) pair, zero included, so alerts see 0, not nothing."""
    rows = GaugeMetricFamily(
        "mailer_outbox_rows",
        "Outbox rows by status and mail kind, counted at scrape time.",
        labels=["status", "kind"],
    )
    for status in Delivery.Status.values:
        for kind in Delivery.Kind.values:
            rows.add_metric([status, kind], snapshot.rows.get((status, kind), 0))
    yield rows
    oldest = GaugeMetricFamily(
        "mailer_outbox_oldest_undelivered_seconds",
        "Age of the oldest pending or sending outbox row; 0 when there is none.",
    )
    oldest.add_metric([], snapshot.oldest_undelivered_seconds)
    yield oldest
    suppressions = GaugeMetricFamily(
        "mailer_suppressions",
        "Addresses on the suppression list by reason, counted at scrape time.",
        labels=["reason"],
    )
    for reason in Suppression.Reason.values:
        suppressions.add_metric([reason], snapshot.suppressions.get(reason, 0))
    yield suppressions
