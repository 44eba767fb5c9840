"""The outbox: create a delivery, dispatch it, claim it, send it, record it."""

import logging
import uuid
from datetime import timedelta
from email.utils import make_msgid

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from mailer.messages import build_message
from mailer.models import Delivery
from mailer.smtp import ReusedConnection

logger = logging.getLogger(__name__)


def create_welcome_delivery(*, user_id: int) -> Delivery:
    """Write the outbox row owed to a new user; call inside their transaction."""
    return Delivery.objects.create(
        user_id=user_id,
        kind=Delivery.Kind.WELCOME,
        task_id=str(uuid.uuid4()),
        message_id=make_msgid(idstring="welcome", domain=_sender_domain()),
        lease_expires_at=timezone.now() + _stale_after(),
    )


def create_repeatable_delivery(*, user_id: int, kind: str) -> Delivery | None:
    """Write an outbox row of a kind a person can trigger again and again.

    None when the user got one of this kind within its interval
    (MAILER_NOTICE_INTERVAL, MAILER_ACTIVATION_RESEND_INTERVAL): a stranger
    repeating a registration or a resend cannot flood their inbox. Call
    inside the transaction that holds the user's row lock.
    """
    interval = {
        Delivery.Kind.ACCOUNT_EXISTS: settings.MAILER_NOTICE_INTERVAL,
        Delivery.Kind.ACTIVATION: settings.MAILER_ACTIVATION_RESEND_INTERVAL,
    }[kind]
    since = timezone.now() - timedelta(seconds=interval)
    recent = Delivery.objects.filter(user_id=user_id, kind=kind, created_at__gt=since)
    if recent.exists():
        return None
    return Delivery.objects.create(
        user_id=user_id,
        kind=kind,
        task_id=str(uuid.uuid4()),
        message_id=make_msgid(idstring=kind, domain=_sender_domain()),
        lease_expires_at=timezone.now() + _stale_after(),
    )


def dispatch_delivery(delivery_id: int, task_id: str | None = None) -> str:
    """Publish the send task for a delivery; return the task id it went with."""
    from mailer.tasks import send_welcome_email

    task_id = task_id or str(uuid.uuid4())
    send_welcome_email.apply_async(args=(delivery_id,), task_id=task_id)
    return task_id


def dispatch_after_commit(delivery_id: int, task_id: str) -> None:
    """Publish a committed row's task; on a broker error log it and move on.

    The row stays pending and the sweeper dispatches it later, so a broker
    outage never turns a committed registration into an error. (Django 5.2's
    `robust=True` would log `func.__qualname__`, which a partial lacks.)
    """
    try:
        dispatch_delivery(delivery_id, task_id)
    except Exception:  # noqa: BLE001 - the row and the sweeper cover any failure
        logger.exception(
            "Dispatch of delivery %s failed; left pending for the sweeper", delivery_id
        )


def claim_delivery(*, delivery_id: int, task_id: str) -> Delivery | None:
    """Take a pending row for one send attempt; None when someone else has it.

    A conditional UPDATE, atomic on every backend: of many copies of one
    task message, exactly one moves the row from pending to sending.
    """
    now = timezone.now()
    lease = now + timedelta(seconds=settings.MAILER_SEND_TIME_LIMIT) + _stale_after()
    claimed = Delivery.objects.filter(
        pk=delivery_id, status=Delivery.Status.PENDING
    ).update(
        status=Delivery.Status.SENDING,
        task_id=task_id,
        attempts=F("attempts") + 1,
        lease_expires_at=lease,
        updated_at=now,
    )
    if not claimed:
        return None
    return Delivery.objects.select_related("user").get(pk=delivery_id)


def send_delivery(delivery: Delivery) -> None:
    """Render the mail for a claimed row (by its kind) and hand it to SMTP."""
    ReusedConnection.send(build_message(delivery))


def mark_sent(*, delivery_id: int, task_id: str) -> bool:
    """Record a delivery the relay accepted; False if the claim was lost."""
    now = timezone.now()
    return bool(
        _claimed_by(delivery_id, task_id).update(
            status=Delivery.Status.SENT,
            sent_at=now,
            smtp_code=250,
            last_error="",
            updated_at=now,
        )
    )


def mark_retrying(
    *, delivery_id: int, task_id: str, countdown: float, code: int | None, reason: str
) -> None:
    """Hand a claimed row back to pending until its retry is due."""
    now = timezone.now()
    _claimed_by(delivery_id, task_id).update(
        status=Delivery.Status.PENDING,
        smtp_code=code,
        last_error=reason,
        lease_expires_at=now + timedelta(seconds=countdown) + _stale_after(),
        updated_at=now,
    )


def mark_failed(
    *, delivery_id: int, task_id: str, code: int | None, reason: str
) -> None:
    """Record a delivery that will not be retried, with the relay's reason."""
    _claimed_by(delivery_id, task_id).update(
        status=Delivery.Status.FAILED,
        smtp_code=code,
        last_error=reason,
        updated_at=timezone.now(),
    )


def _claimed_by(delivery_id: int, task_id: str):
    return Delivery.objects.filter(
        pk=delivery_id, status=Delivery.Status.SENDING, task_id=task_id
    )


def _stale_after() -> timedelta:
    return timedelta(seconds=settings.MAILER_STALE_AFTER)


def _sender_domain() -> str:
    # make_msgid() without a domain resolves the host name: a DNS lookup.
    address = settings.DEFAULT_FROM_EMAIL.rsplit("<", 1)[-1].rstrip(">")
    return address.rpartition("@")[2] or "localhost"
