"""The suppression list: addresses no mail goes to, and what puts them there.

An address goes on the list after a permanent failure about its mailbox
(an SMTP 5.1.x or 5.2.1, an ESP that refuses the recipient), a bounce or
complaint an ESP reports later (mailer/esp.py), or by an admin's hand. The
send attempt checks the list after its claim: a listed address gets no
mail, and its row the status `suppressed`.
"""

import functools
import logging
import re
import smtplib

from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, OuterRef
from django.db.models.functions import Lower
from django.utils import timezone

from mailer import metrics
from mailer.models import Delivery, Suppression

logger = logging.getLogger(__name__)

# RFC 3463 enhanced status codes in a reply's text: "550 5.1.1 <x>: unknown".
ENHANCED_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
# 5.1.x is about an address; these three are about the sender's, or no failure.
NOT_THE_RECIPIENT = {(1, 5), (1, 7), (1, 8)}
MAILBOX_DISABLED = (2, 1)


def normalize_address(address: str) -> str:
    """Return `address` as registration stores it (the domain lowercased)."""
    return get_user_model().objects.normalize_email(address.strip())


def suppressed_addresses():
    """A queryset of Suppression rows keyed by the lowercased address."""
    return Suppression.objects.alias(key=Lower("address"))


def is_suppressed(*, address: str) -> bool:
    """Whether `address` is on the list, in any letter case.

    The lookup `suppressed_addresses().filter(key=...).exists()` makes, in
    SQL written once: each send attempt runs it, and the ORM's compiling of
    it cost most of its worker CPU (bench/fig_stages.py).
    """
    key = normalize_address(address).lower()
    with connection.cursor() as cursor:
        cursor.execute(_is_suppressed_sql(), [key])
        return cursor.fetchone() is not None


@functools.cache
def _is_suppressed_sql() -> str:
    quote = connection.ops.quote_name
    address = quote(Suppression._meta.get_field("address").column)
    return (
        f"SELECT 1 FROM {quote(Suppression._meta.db_table)} "
        f"WHERE LOWER({address}) = %s LIMIT 1"
    )


def suppress(*, address: str, reason: str, source: str, evidence: str) -> bool:
    """Put `address` on the list; False if it was already there.

    A hard bounce or complaint is counted by its source either way: the
    alert rules compare them with the mails sent. The first reason stays.
    """
    if reason != Suppression.Reason.MANUAL:
        metrics.record_bounce(reason=reason, source=source)
    try:
        with transaction.atomic():
            if is_suppressed(address=address):
                return False
            Suppression.objects.create(
                address=normalize_address(address),
                reason=reason,
                source=source,
                evidence=evidence[:2000],
            )
    except IntegrityError:  # listed by a concurrent bounce of the same address
        return False
    logger.warning("address suppressed reason=%s source=%s", reason, source)
    return True


def lift(*, address: str, by: str) -> bool:
    """Take `address` off the list so mail goes to it again; False if not listed."""
    key = normalize_address(address).lower()
    listed = list(suppressed_addresses().filter(key=key).values_list("pk", "reason"))
    suppressed_addresses().filter(key=key).delete()
    for pk, reason in listed:
        logger.warning("suppression %s (%s) lifted by %s", pk, reason, by)
    return bool(listed)


def withhold(delivery: Delivery) -> bool:
    """Whether a claimed row's address is suppressed; if so, mark it, unsent.

    A row rerun with `resend_failed --include-suppressed` is sent anyway.
    The claim may have looked the address up already (`delivery.listed`,
    PostgreSQL's claim does); else the list is asked here.
    """
    listed = getattr(delivery, "listed", None)
    if listed is None:
        listed = is_suppressed(address=delivery.user.email)
    if not listed or delivery.despite_suppression:
        return False
    Delivery.objects.filter(
        pk=delivery.pk, status=Delivery.Status.SENDING, task_id=delivery.task_id
    ).update(
        status=Delivery.Status.SUPPRESSED,
        last_error="Not sent: the address is on the suppression list.",
        updated_at=timezone.now(),
    )
    return True


def suppress_after_failure(*, address: str, error: BaseException) -> bool:
    """Suppress `address` if a permanent send failure says its mailbox is dead."""
    evidence = mailbox_failure(error)
    if evidence is None:
        return False
    return suppress(
        address=address,
        reason=Suppression.Reason.HARD_BOUNCE,
        source=Suppression.Source.SMTP,
        evidence=evidence,
    )


def mailbox_failure(error: BaseException) -> str | None:
    """The SMTP code and text if `error` is a permanent failure of the mailbox.

    Only a refused recipient or a refused message counts (a refused sender is
    about us), and only a 5xx whose enhanced status code is 5.1.x (unknown
    user, bad domain) or 5.2.1 (disabled): a policy or content refusal
    (5.7.x, 5.3.4) says nothing about the address, nor does a bare 550.
    """
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        replies = list(error.recipients.values())
    elif isinstance(error, smtplib.SMTPDataError):
        replies = [(error.smtp_code, error.smtp_error)]
    else:
        return None
    for code, message in replies:
        text = (
            message.decode("utf-8", "replace")
            if isinstance(message, bytes)
            else message
        )
        if code >= 500 and _is_mailbox_status(text):
            return f"{code} {text}"
    return None


def _is_mailbox_status(text: str) -> bool:
    match = ENHANCED_STATUS.search(text)
    if match is None or match.group(1) != "5":
        return False
    subject, detail = int(match.group(2)), int(match.group(3))
    if subject == 1:
        return (subject, detail) not in NOT_THE_RECIPIENT
    return (subject, detail) == MAILBOX_DISABLED


def rows_of_suppressed_addresses(rows):
    """Filter a Delivery queryset to the rows whose address is suppressed."""
    listed = suppressed_addresses().filter(key=Lower(OuterRef("user__email")))
    return rows.filter(Exists(listed))
