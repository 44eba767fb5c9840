"""A database that drops the request's connection answers 503, not 500.

A registration that meets a dead database connection (PostgreSQL restarted,
its backends terminated, a failover) has almost always committed nothing:
its atomic block rolled back, so no account, no outbox row, no mail. Only
a connection lost during COMMIT itself leaves it unknown; then the account
may exist, and its outbox row, whose on_commit dispatch never ran, goes out
by the sweep. Either way the client may send the same request again after
Retry-After: a taken address gets the same answer as a new one. Any other
error stays a 500 for Django's handler to report.
"""

import logging

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils.translation import gettext as _

from users.json_body import json_error

logger = logging.getLogger(__name__)

RETRY_AFTER = 2  # seconds: Django opens a new connection on the next request
API_PREFIX = "/api/"


class DatabaseUnavailableMiddleware:
    """Answer 503 with Retry-After when a view lost its database connection."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(
        self, request: HttpRequest, exception: Exception
    ) -> HttpResponse | None:
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        logger.warning(
            "database unavailable during %s %s: %r; answered 503",
            request.method,
            request.path,
            exception,
            exc_info=exception,  # a lasting cause (a missing table) shows its trace
        )
        message = _("The service is briefly unavailable. Try again in a few seconds.")
        if request.path.startswith(API_PREFIX):
            response = JsonResponse(json_error("__all__", message), status=503)
        else:
            context = {"message": message}
            response = render(request, "users/unavailable.html", context, status=503)
        response["Retry-After"] = str(RETRY_AFTER)
        return response
