from unittest import mock

import pytest
from django.db import OperationalError

from mailer import claims
from mailer.models import Delivery
from mailer.tasks import send_welcome_email
from tests.factories import DeliveryFactory

pytestmark = pytest.mark.django_db


def test_claim_that_hits_a_database_error_is_retried_then_sends_once(
    settings, mailoutbox
):
    settings.MAILER_RETRY_BACKOFF = 0.01
    delivery = DeliveryFactory()
    claim = claims.claim_delivery
    outage = [OperationalError("database is locked")] * 2

    def flaky_claim(**kwargs):
        if outage:
            raise outage.pop()
        return claim(**kwargs)

    with mock.patch.object(claims, "claim_delivery", side_effect=flaky_claim):
        result = send_welcome_email.apply(args=(delivery.pk,))

    assert result.get() == "sent"
    assert len(mailoutbox) == 1
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.SENT
    assert delivery.attempts == 1


def test_recording_a_sent_mail_rides_out_a_short_database_error(settings, mailoutbox):
    settings.MAILER_STALE_AFTER = 10
    delivery = DeliveryFactory()
    mark_sent = claims.mark_sent
    outage = [OperationalError("server closed the connection unexpectedly")]

    def flaky_mark_sent(**kwargs):
        if outage:
            raise outage.pop()
        return mark_sent(**kwargs)

    with mock.patch.object(claims, "mark_sent", side_effect=flaky_mark_sent):
        result = send_welcome_email.apply(args=(delivery.pk,))

    assert result.get() == "sent"
    assert len(mailoutbox) == 1
    assert Delivery.objects.get(pk=delivery.pk).status == Delivery.Status.SENT
