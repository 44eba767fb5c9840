"""The suppression list: what puts an address on it, and what it stops."""

import smtplib
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import IntegrityError, connection

from mailer import claims, metrics, suppression
from mailer.models import Delivery, Suppression
from mailer.rerun import _failed_deliveries, _mark_for_rerun
from mailer.tasks import send_account_mail, send_welcome_email
from tests.factories import DeliveryFactory

pytestmark = pytest.mark.django_db


def suppressed_sends() -> float:
    sample = metrics.DELIVERIES.labels(kind="welcome", outcome="suppressed")
    return sample._value.get()


def bounces(reason: str, source: str) -> float:
    return metrics.BOUNCES.labels(reason=reason, source=source)._value.get()


def listed(address: str, **fields) -> Suppression:
    fields.setdefault("reason", Suppression.Reason.HARD_BOUNCE)
    fields.setdefault("source", Suppression.Source.SMTP)
    return Suppression.objects.create(address=address, **fields)


@pytest.mark.parametrize(
    "error",
    [
        smtplib.SMTPRecipientsRefused(
            {"gone@example.com": (550, b"5.1.1 <gone@example.com>: User unknown")}
        ),
        smtplib.SMTPRecipientsRefused(
            {"x@nowhere.invalid": (550, b"5.1.2 Bad destination system address")}
        ),
        smtplib.SMTPDataError(550, b"5.1.1 No such user here"),
        smtplib.SMTPDataError(554, b"5.2.1 The email account is disabled"),
        smtplib.SMTPDataError(550, "5.1.10 Null MX: no mail for this domain"),
    ],
)
def test_a_permanent_failure_of_the_mailbox_is_evidence(error):
    evidence = suppression.mailbox_failure(error)

    assert evidence is not None and evidence.startswith(("550 ", "554 "))


@pytest.mark.parametrize(
    "error",
    [
        smtplib.SMTPDataError(550, b"5.7.1 Message rejected as spam"),
        smtplib.SMTPDataError(554, b"5.3.4 Message too big for system"),
        smtplib.SMTPDataError(552, b"5.2.2 Mailbox full"),
        smtplib.SMTPDataError(550, b"Mailbox unavailable"),  # no enhanced code
        smtplib.SMTPDataError(450, b"4.1.1 Try again"),
        smtplib.SMTPSenderRefused(553, b"5.1.8 Bad sender domain", "me@x.org"),
        smtplib.SMTPRecipientsRefused({"a@example.com": (550, b"5.1.7 Bad sender")}),
        smtplib.SMTPServerDisconnected("gone"),
    ],
)
def test_policy_content_sender_and_transient_failures_are_no_evidence(error):
    assert suppression.mailbox_failure(error) is None


def test_the_list_matches_an_address_in_any_letter_case():
    listed("Ada.Lovelace@example.com")

    assert suppression.is_suppressed(address="ada.lovelace@EXAMPLE.com")
    assert suppression.is_suppressed(address="ADA.LOVELACE@example.com")
    assert not suppression.is_suppressed(address="ada@example.com")


def test_an_address_is_listed_once_in_any_letter_case():
    listed("ada@example.com")

    with pytest.raises(IntegrityError):
        listed("ADA@example.com")


def test_suppress_stores_the_normalized_address_and_keeps_the_first_reason():
    added = suppression.suppress(
        address=" ada@EXAMPLE.COM",
        reason=Suppression.Reason.HARD_BOUNCE,
        source=Suppression.Source.SMTP,
        evidence="550 5.1.1 unknown",
    )
    again = suppression.suppress(
        address="ada@example.com",
        reason=Suppression.Reason.COMPLAINT,
        source=Suppression.Source.WEBHOOK,
        evidence="Postmark event 1",
    )

    assert (added, again) == (True, False)
    [entry] = Suppression.objects.all()
    assert entry.address == "ada@example.com"
    assert entry.reason == Suppression.Reason.HARD_BOUNCE
    assert entry.evidence == "550 5.1.1 unknown"


def test_each_hard_bounce_and_complaint_is_counted_by_source():
    before = bounces("complaint", "webhook")

    for _ in range(2):
        suppression.suppress(
            address="ada@example.com",
            reason=Suppression.Reason.COMPLAINT,
            source=Suppression.Source.WEBHOOK,
            evidence="event",
        )

    assert bounces("complaint", "webhook") == before + 2


def test_a_suppressed_address_gets_no_mail_and_its_row_says_suppressed(mailoutbox):
    listed("ada@example.com")
    delivery = DeliveryFactory(user__email="Ada@example.com")
    before = suppressed_sends()

    assert send_welcome_email.apply(args=(delivery.pk,)).get() == "suppressed"

    assert mailoutbox == []
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.SUPPRESSED
    assert "suppression list" in delivery.last_error
    assert suppressed_sends() == before + 1


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="PostgreSQL's claim looks it up"
)
def test_the_claim_looks_the_address_up_so_withholding_asks_nothing_more(
    django_assert_num_queries,
):
    listed("ada@example.com")
    listed("EVE@example.com")
    ada = DeliveryFactory(user__email="ADA@Example.com")
    bob = DeliveryFactory(user__email="bob@example.com")
    rerun = DeliveryFactory(user__email="eve@example.com", despite_suppression=True)

    with django_assert_num_queries(3):
        claimed = [
            claims.claim_delivery(delivery_id=row.pk, task_id=f"t{row.pk}")
            for row in (ada, bob, rerun)
        ]
    assert [row.listed for row in claimed] == [True, False, True]

    with django_assert_num_queries(0):
        assert not suppression.withhold(claimed[1])
        assert not suppression.withhold(claimed[2])  # sent despite the list
    assert suppression.withhold(claimed[0])
    ada.refresh_from_db()
    assert ada.status == Delivery.Status.SUPPRESSED


def test_a_550_5_1_1_suppresses_and_a_later_notice_sends_nothing(
    smtp, real_smtp, mailoutbox
):
    delivery = DeliveryFactory(user__email="gone@example.com")
    smtp.script.replies["gone@example.com"] = ["550 5.1.1 No such user here"]
    before = bounces("hard_bounce", "smtp")

    assert send_welcome_email.apply(args=(delivery.pk,)).failed()

    [entry] = Suppression.objects.all()
    assert entry.address == "gone@example.com"
    assert (entry.reason, entry.source) == ("hard_bounce", "smtp")
    assert entry.evidence == "550 5.1.1 No such user here"
    assert bounces("hard_bounce", "smtp") == before + 1
    notice = DeliveryFactory(user=delivery.user, kind=Delivery.Kind.ACCOUNT_EXISTS)
    assert send_account_mail.apply(args=(notice.pk,)).get() == "suppressed"
    assert smtp.attempts["gone@example.com"] == 1


def test_a_policy_refusal_fails_the_row_and_suppresses_nothing(smtp, real_smtp):
    delivery = DeliveryFactory(user__email="strict@example.com")
    smtp.script.replies["strict@example.com"] = ["550 5.7.1 Rejected by policy"]

    assert send_welcome_email.apply(args=(delivery.pk,)).failed()

    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.FAILED
    assert not Suppression.objects.exists()


def test_lift_takes_the_address_off_the_list_and_mail_goes_again(mailoutbox):
    listed("ada@example.com")

    assert suppression.lift(address="ADA@example.com", by="admin@example.com")
    assert not suppression.lift(address="ada@example.com", by="admin@example.com")

    delivery = DeliveryFactory(user__email="ada@example.com")
    assert send_welcome_email.apply(args=(delivery.pk,)).get() == "sent"
    assert len(mailoutbox) == 1


def resend_failed(*args: str) -> str:
    out = StringIO()
    call_command("resend_failed", *args, stdout=out)
    return out.getvalue()


def failed_row(email: str) -> Delivery:
    return DeliveryFactory(
        user__email=email,
        status=Delivery.Status.FAILED,
        smtp_code=550,
        last_error="550 5.1.1 No such user here",
    )


def test_resend_failed_skips_suppressed_addresses_and_says_how_many():
    gone, other = failed_row("gone@example.com"), failed_row("ok@example.com")
    listed("gone@example.com")

    out = resend_failed("--dry-run")

    assert "Would rerun 1 failed deliveries" in out
    assert "Skipped 1 failed deliveries to suppressed addresses" in out
    assert f"Delivery {gone.pk}: the address is suppressed" in out
    assert f"Delivery {other.pk} " in out and f"Delivery {gone.pk} (" not in out


def test_resend_failed_include_suppressed_sends_despite_the_list(mailoutbox):
    gone = failed_row("gone@example.com")
    listed("gone@example.com")

    rows = _failed_deliveries(Delivery.objects.filter(pk=gone.pk))
    [marked] = _mark_for_rerun(rows, despite_suppression=True)

    result = send_welcome_email.apply(args=(gone.pk,), task_id=marked.job.task_id).get()

    assert result == "sent"
    assert mailoutbox[0].to == ["gone@example.com"]
    assert suppression.is_suppressed(address="gone@example.com")


def test_a_rerun_without_the_flag_is_still_withheld(mailoutbox):
    gone = failed_row("gone@example.com")
    [marked] = _mark_for_rerun(_failed_deliveries(Delivery.objects.filter(pk=gone.pk)))
    listed("gone@example.com")  # suppressed after the rerun was marked

    result = send_welcome_email.apply(args=(gone.pk,), task_id=marked.job.task_id)

    assert result.get() == "suppressed"
    assert mailoutbox == []


def test_the_list_outlives_the_account_so_a_new_account_is_not_mailed(mailoutbox):
    old = DeliveryFactory(user__email="gone@example.com")
    listed("gone@example.com")
    old.user.delete()

    again = DeliveryFactory(user__email="Gone@example.com")

    assert send_welcome_email.apply(args=(again.pk,)).get() == "suppressed"
    assert mailoutbox == []


def test_a_5_1_1_at_rcpt_to_suppresses_too(smtp, real_smtp):
    delivery = DeliveryFactory(user__email="nobody@example.com")
    smtp.script.rcpt_reply = "550 5.1.1 <nobody@example.com>: Recipient unknown"

    assert send_welcome_email.apply(args=(delivery.pk,)).failed()

    entry = Suppression.objects.get()
    assert entry.address == "nobody@example.com"
    assert entry.evidence == "550 5.1.1 <nobody@example.com>: Recipient unknown"
