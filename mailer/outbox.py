"""The outbox: write the row owed to a person, in their transaction."""

import uuid
from datetime import timedelta
from email.utils import make_msgid
from typing import TYPE_CHECKING

from django.conf import settings
from django.utils import timezone

from mailer.leases import stale_after
from mailer.models import Delivery

if TYPE_CHECKING:
    from users.models import User


def create_welcome_delivery(*, user: "User") -> Delivery:
    """Write the outbox row owed to a new user; call inside their transaction.

    The row keeps the user's language: the mail is written in it.
    """
    return Delivery.objects.create(
        user=user,
        kind=Delivery.Kind.WELCOME,
        language=user.language,
        task_id=str(uuid.uuid4()),
        message_id=make_msgid(idstring="welcome", domain=_sender_domain()),
        lease_expires_at=timezone.now() + stale_after(),
    )


def create_repeatable_delivery(*, user: "User", kind: str) -> Delivery | None:
    """Write an outbox row of a kind a person can trigger again and again.

    None when the user got one of this kind within its interval
    (MAILER_NOTICE_INTERVAL, MAILER_ACTIVATION_RESEND_INTERVAL): a stranger
    repeating a registration or a resend cannot flood their inbox. Call
    inside the transaction that holds the user's row lock. The row keeps the
    user's stored language, whoever triggered it.
    """
    interval = {
        Delivery.Kind.ACCOUNT_EXISTS: settings.MAILER_NOTICE_INTERVAL,
        Delivery.Kind.ACTIVATION: settings.MAILER_ACTIVATION_RESEND_INTERVAL,
    }[kind]
    since = timezone.now() - timedelta(seconds=interval)
    recent = Delivery.objects.filter(user=user, kind=kind, created_at__gt=since)
    if recent.exists():
        return None
    return Delivery.objects.create(
        user=user,
        kind=kind,
        language=user.language,
        task_id=str(uuid.uuid4()),
        message_id=make_msgid(idstring=kind, domain=_sender_domain()),
        lease_expires_at=timezone.now() + stale_after(),
    )


def _sender_domain() -> str:
    # make_msgid() without a domain resolves the host name: a DNS lookup.
    address = settings.DEFAULT_FROM_EMAIL.rsplit("<", 1)[-1].rstrip(">")
    return address.rpartition("@")[2] or "localhost"
