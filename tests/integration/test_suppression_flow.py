"""Suppression end to end: a real worker, broker and SMTP server, real webhooks."""

import base64
import json
import time
from io import StringIO

import pytest
from django.core.management import call_command
from django.urls import reverse

from mailer.models import Delivery, Suppression, TrackingEvent
from tests.support import register, wait_for_delivery, wait_until
from tests.support.esp import bounce_event, serve_webhooks

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SECRET = "postmark:integration-secret"


@pytest.fixture(autouse=True)
def _services(celery_worker, smtp):
    """Every test here runs against the real worker, Redis and SMTP server."""


@pytest.fixture
def webhooks(settings):
    """The /anymail/ URLs served, as with ANYMAIL_WEBHOOK_SECRET set."""
    yield from serve_webhooks(settings, SECRET)


def resend_failed(*args: str) -> str:
    out = StringIO()
    call_command("resend_failed", *args, stdout=out)
    return out.getvalue()


def registered_again(client, email: str) -> Delivery:
    """Register `email` a second time; return its account-exists notice row."""
    response = register(client, email)
    assert response.status_code == 202
    return wait_until(
        lambda: (
            Delivery.objects.filter(
                user__email=email, kind=Delivery.Kind.ACCOUNT_EXISTS
            )
            .exclude(status__in=["pending", "sending"])
            .first()
        ),
        timeout=20,
        what=f"the account-exists notice to {email} settled",
    )


def test_a_550_5_1_1_suppresses_the_address_and_later_mail_is_withheld_until_lifted(
    client, admin_client, smtp
):
    email = "gone@example.com"
    smtp.script.replies[email] = ["550 5.1.1 <gone@example.com>: User unknown"]
    first = register(client, email)

    failed = wait_for_delivery(email=email, status="failed")
    entry = Suppression.objects.get(address=email)
    assert (entry.reason, entry.source) == ("hard_bounce", "smtp")
    assert entry.evidence == "550 5.1.1 <gone@example.com>: User unknown"

    # A later account-exists notice sends nothing, and the answer is the same.
    again = register(client, email)
    notice = wait_until(
        lambda: Delivery.objects.filter(
            user__email=email, kind="account_exists", status="suppressed"
        ).first(),
        timeout=20,
        what="the notice withheld",
    )
    assert (again.status_code, again.content) == (first.status_code, first.content)
    assert notice.status == Delivery.Status.SUPPRESSED
    assert smtp.attempts[email] == 1

    # resend_failed skips it and says so.
    out = resend_failed()
    assert "Skipped 1 failed deliveries to suppressed addresses" in out
    assert f"Delivery {failed.pk}: the address is suppressed" in out
    time.sleep(1)
    assert Delivery.objects.get(pk=failed.pk).status == "failed"
    assert smtp.attempts[email] == 1

    # The admin lifts it; the next rerun delivers.
    response = admin_client.post(
        reverse("admin:mailer_suppression_changelist"),
        {"action": "lift", "_selected_action": [entry.pk]},
    )
    assert response.status_code == 302
    assert not Suppression.objects.exists()
    assert "Rerun 1 failed deliveries" in resend_failed()
    wait_for_delivery(email=email, status="sent")
    assert len(smtp.mails_to(email)) == 1


def test_include_suppressed_sends_the_failed_mail_and_keeps_the_address_listed(
    client, smtp
):
    email = "works-again@example.com"
    smtp.script.replies[email] = ["550 5.1.1 User unknown"]
    register(client, email)
    failed = wait_for_delivery(email=email, status="failed")

    out = resend_failed("--include-suppressed")

    assert "Rerun 1 failed deliveries" in out and "Skipped" not in out
    wait_for_delivery(email=email, status="sent")
    assert len(smtp.mails_to(email)) == 1
    assert Delivery.objects.get(pk=failed.pk).despite_suppression
    assert Suppression.objects.filter(address=email).exists()


def test_a_bounce_webhook_suppresses_an_address_smtp_had_accepted(
    client, smtp, webhooks
):
    email = "bounces-later@example.com"
    register(client, email)
    welcome = wait_for_delivery(email=email, status="sent")
    assert len(smtp.mails_to(email)) == 1

    response = client.post(
        "/anymail/postmark/tracking/",
        data=json.dumps(
            bounce_event(email=email, event_id=987654, delivery_id=welcome.pk)
        ),
        content_type="application/json",
        HTTP_AUTHORIZATION="Basic " + base64.b64encode(SECRET.encode()).decode(),
    )

    assert response.status_code == 200
    entry = Suppression.objects.get(address=email)
    assert (entry.reason, entry.source) == ("hard_bounce", "webhook")
    assert TrackingEvent.objects.get().delivery_id == welcome.pk
    notice = registered_again(client, email)
    assert notice.status == Delivery.Status.SUPPRESSED
    assert len(smtp.mails_to(email)) == 1
