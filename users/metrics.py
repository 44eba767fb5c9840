"""The web's metrics: registrations by answer, rate-limit rejections by scope.

Labels take values from fixed sets (docs/monitoring.md); an unexpected
status is counted as "other", never as itself.
"""

import functools
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from prometheus_client import Counter

from project.prometheus import configure_metrics

configure_metrics()

CHANNELS = frozenset({"api", "form"})
SCOPES = frozenset({"register", "resend"})
LIMITED_BY = frozenset({"ip", "address"})
# A form registration that succeeds redirects (302); the API answers 202.
ANSWERS = {202: "accepted", 302: "accepted", 400: "400", 413: "413", 429: "429"}
OTHER = "other"

REGISTRATIONS = Counter(
    "users_registrations",
    "Registration requests by channel (api, form) and answer (accepted, 400, 429).",
    ["channel", "answer"],
)
RATELIMIT_REJECTIONS = Counter(
    "users_ratelimit_rejections",
    "Requests refused with 429 by a rate limit, by scope and what it counts.",
    ["scope", "by"],
)


def record_registration(*, channel: str, status: int) -> None:
    """Count one answered registration POST by its HTTP status."""
    channel = channel if channel in CHANNELS else OTHER
    REGISTRATIONS.labels(channel=channel, answer=ANSWERS.get(status, OTHER)).inc()


def record_rate_limited(*, scope: str, by: str) -> None:
    """Count one request a rate limit refused."""
    RATELIMIT_REJECTIONS.labels(
        scope=scope if scope in SCOPES else OTHER,
        by=by if by in LIMITED_BY else OTHER,
    ).inc()


def counts_registrations(channel: str) -> Callable:
    """Decorate a registration view: count each POST's answer (GET pages are not)."""

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @functools.wraps(view)
        def counted(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            response = view(request, *args, **kwargs)
            if request.method == "POST":
                record_registration(channel=channel, status=response.status_code)
            return response

        return counted

    return decorator
