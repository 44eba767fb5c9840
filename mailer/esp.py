"""Sending through an ESP with django-anymail: its errors, and its webhooks.

`classify_send_error` tells what a failed send means whichever backend
sent it (SMTP or an anymail ESP backend). `record_tracking_event` is the
receiver of anymail's `tracking` signal: it stores bounces and complaints
and suppresses their addresses, and only writes rows, so a burst of
webhook calls never waits on a send.
"""

import functools
import hashlib
import logging

import requests
from anymail.exceptions import (
    AnymailAPIError,
    AnymailError,
    AnymailRecipientsRefused,
)
from anymail.signals import AnymailTrackingEvent, EventType, RejectReason
from django.contrib.auth import get_user_model
from django.db import DatabaseError, transaction
from django.http import HttpResponseBadRequest
from django.urls import URLPattern

from mailer import suppression
from mailer.models import Delivery, Suppression, TrackingEvent
from mailer.smtp import SendFailure, classify_smtp_error

logger = logging.getLogger(__name__)

# What a send can raise: smtplib's errors are OSErrors; anymail's are not all.
SEND_ERRORS = (OSError, AnymailError)

# The refusal's recipient status that means the address itself is bad.
DEAD_ADDRESS_STATUSES = frozenset({"rejected", "invalid"})
# A refusal with no HTTP error status still gets a 5xx code on the row.
REFUSED_CODE = 550
TOO_MANY_REQUESTS = 429
MAX_ADDRESS = 254  # RFC 5321's limit, and the address columns'

# Anymail names Postmark's SoftBounce (a full mailbox, a quota) "bounced"
# too; Postmark itself keeps such an address active, and so do we.
SOFT_BOUNCES = {"Postmark": frozenset({"SoftBounce"})}


def classify_send_error(error: BaseException, **smtp_context) -> SendFailure:
    """Classify a failed send from any backend: SMTP, or an anymail ESP.

    `smtp_context` goes to `classify_smtp_error` as it is (what else the
    SMTP classification wants to know about the relay).
    """
    if isinstance(error, AnymailError):
        return classify_anymail_error(error)
    return classify_smtp_error(error, **smtp_context)


def classify_anymail_error(error: AnymailError) -> SendFailure:
    """Tell a transient ESP failure from a permanent one.

    A refused recipient is permanent for it. A 429 or 5xx from the API is
    the ESP as a whole pushing back: transient and relay-wide, so no retry
    is spent. Another 4xx is our configuration (a bad token, a sender the
    ESP does not know): permanent, and logged as an error. A connection
    error or timeout is transient; the ESP may have taken the mail before
    the timeout (docs/RELIABILITY.md, the duplicate window).
    """
    status = getattr(error, "status_code", None)
    reason = _reason(error)
    if isinstance(error, AnymailRecipientsRefused):
        code = status if status and status >= 400 else REFUSED_CODE
        return SendFailure(transient=False, code=code, reason=reason)
    if isinstance(error.__cause__, requests.RequestException):
        # No answer came (refused, reset, timed out, cut off mid-answer).
        return SendFailure(transient=True, code=None, reason=reason)
    if isinstance(error, AnymailAPIError) and status is not None:
        if status == TOO_MANY_REQUESTS or status >= 500:
            return SendFailure(
                transient=True, code=status, reason=reason, relay_wide=True
            )
    logger.error("ESP refused the mail: a configuration error? %s", reason)
    return SendFailure(transient=False, code=status, reason=reason)


def refused_statuses(error: BaseException) -> set[str]:
    """The recipient statuses of an ESP's refusal ({"rejected"}, {"invalid"})."""
    if not isinstance(error, AnymailRecipientsRefused):
        return set()
    status = getattr(error.email_message, "anymail_status", None)
    recipients = getattr(status, "recipients", None) or {}
    return {recipient.status for recipient in recipients.values()}


def suppress_refused_recipient(*, address: str, error: BaseException) -> bool:
    """Suppress `address` if the ESP refused it as rejected or invalid."""
    if not refused_statuses(error) & DEAD_ADDRESS_STATUSES:
        return False
    return suppression.suppress(
        address=address,
        reason=Suppression.Reason.HARD_BOUNCE,
        source=Suppression.Source.ESP_API,
        evidence=_reason(error),
    )


def suppress_after_failure(*, address: str, error: BaseException) -> bool:
    """Suppress `address` after a permanent failure that says it is dead.

    A database error here is logged, not raised: the row is still marked
    failed, and the next failure of the address suppresses it.
    """
    try:
        if isinstance(error, AnymailError):
            return suppress_refused_recipient(address=address, error=error)
        return suppression.suppress_after_failure(address=address, error=error)
    except DatabaseError:
        logger.warning("could not suppress after a permanent failure", exc_info=True)
        return False


def _reason(error: AnymailError) -> str:
    """The ESP's own words: its JSON "Message" if any, else the exception."""
    response = getattr(error, "response", None)
    try:
        message = response.json().get("Message") if response is not None else None
    except (ValueError, AttributeError):
        message = None
    # Else the exception's first lines: its message and its cause, if any.
    text = str(message) if message else " ".join(str(error).splitlines()[:2])
    esp = getattr(error, "esp_name", None) or "ESP"
    return f"{esp}: {text}"[:1000]


def record_tracking_event(sender, *, event: AnymailTrackingEvent, esp_name, **kwargs):
    """Store a bounce or complaint from an ESP's webhook (anymail's `tracking`)."""
    record_event(esp_name=esp_name, event=event)


def suppression_reason(esp_name: str, event: AnymailTrackingEvent) -> str | None:
    """The reason an event suppresses its address, or None when it does not.

    `bounced`; `rejected` because the address bounced before or is invalid;
    `complained`. Deliveries, opens, deferrals and soft bounces do not.
    """
    if event.event_type == EventType.COMPLAINED:
        return Suppression.Reason.COMPLAINT
    if event.event_type == EventType.BOUNCED:
        raw_type = event.esp_event.get("Type") if _is_dict(event.esp_event) else None
        if raw_type in SOFT_BOUNCES.get(esp_name, ()):
            return None
        return Suppression.Reason.HARD_BOUNCE
    if event.event_type == EventType.REJECTED and event.reject_reason in {
        RejectReason.BOUNCED,
        RejectReason.INVALID,
    }:
        return Suppression.Reason.HARD_BOUNCE
    return None


@transaction.atomic
def record_event(*, esp_name: str, event: AnymailTrackingEvent) -> bool:
    """Store one bounce or complaint, once per event id, and suppress its address.

    Returns False for an event that suppresses nothing, one with no
    recipient, or a replay of an event already stored.
    """
    reason = suppression_reason(esp_name, event)
    if reason is None or not event.recipient or len(event.recipient) > MAX_ADDRESS:
        return False  # nothing to suppress: no address could have been sent to
    event_id = (event.event_id or _digest(esp_name, event))[:255]
    stored, created = TrackingEvent.objects.get_or_create(
        esp_name=esp_name,
        event_id=event_id,
        defaults={
            "event_type": event.event_type,
            "reject_reason": event.reject_reason or "",
            "recipient": event.recipient,
            "delivery_id": _delivery_of(event),
            "description": event.description or event.mta_response or "",
        },
    )
    if not created:
        logger.info("%s event %s seen before: nothing done", esp_name, event_id)
        return False
    suppression.suppress(
        address=event.recipient,
        reason=reason,
        source=Suppression.Source.WEBHOOK,
        evidence=f"{esp_name} {event.event_type} event {event_id}: "
        f"{stored.description}",
    )
    return True


def _delivery_of(event: AnymailTrackingEvent) -> int | None:
    """The outbox row of an event: from its metadata, else its recipient's last."""
    metadata = event.metadata if _is_dict(event.metadata) else {}
    try:
        delivery_id = int(metadata.get("delivery_id", ""))
    except (TypeError, ValueError):
        delivery_id = None
    if delivery_id is not None:
        if Delivery.objects.filter(pk=delivery_id).exists():
            return delivery_id
    users = get_user_model().objects.filter(email__iexact=event.recipient)
    return (
        Delivery.objects.filter(user__in=users)
        .order_by("-pk")
        .values_list("pk", flat=True)
        .first()
    )


def _digest(esp_name: str, event: AnymailTrackingEvent) -> str:
    """An id for an event the ESP sent without one: the same event, the same id."""
    parts = [
        esp_name,
        str(event.event_type),
        str(event.recipient),
        str(event.message_id),
        str(event.timestamp),
    ]
    return "sha256:" + hashlib.sha256("|".join(parts).encode()).hexdigest()


def _is_dict(value) -> bool:
    return isinstance(value, dict)


def uses_anymail(backend_path: str) -> bool:
    """Whether an EMAIL_BACKEND path names one of anymail's ESP backends."""
    return backend_path.startswith("anymail.backends.") and not backend_path.endswith(
        (".test.EmailBackend", ".console.EmailBackend")
    )


def webhook_urls() -> tuple[list[URLPattern], str]:
    """anymail's webhook URLs (its namespace too), each refusing unreadable bodies."""
    from anymail import urls

    patterns = [
        URLPattern(
            pattern.pattern,
            _unreadable_is_bad_request(pattern.callback),
            pattern.default_args,
            pattern.name,
        )
        for pattern in urls.urlpatterns
    ]
    return patterns, urls.app_name


# What anymail's parsers raise on a body that is not the ESP's format.
UNREADABLE = (ValueError, TypeError, KeyError, AttributeError)


def _unreadable_is_bad_request(view):
    """Answer 400, not 500, when anymail cannot read an authenticated event.

    anymail checks the basic auth first (400 when it fails), then parses: a
    body that is not JSON or not the ESP's shape raised out of the view as a
    500. A database error still gives 500, so the ESP sends the event again.
    """

    @functools.wraps(view)
    def wrapped(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except UNREADABLE as error:
            logger.warning(
                "ESP webhook %s: unreadable event (%s)",
                request.path,
                type(error).__name__,
            )
            return HttpResponseBadRequest("Unreadable event.\n")

    return wrapped
