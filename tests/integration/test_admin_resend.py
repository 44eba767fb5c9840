"""The admin's Resend action reruns failed mails through a real worker."""

import pytest
from django.urls import reverse

from mailer.models import Delivery
from tests.factories import DeliveryFactory
from tests.support import wait_for_delivery

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_resend_action_delivers_the_selected_failed_mails_once(
    admin_client, celery_worker, smtp
):
    rows = [
        DeliveryFactory(
            user__email=f"again{n}@example.com",
            status=Delivery.Status.FAILED,
            smtp_code=451,
            last_error="4.3.0 retries exhausted",
        )
        for n in range(2)
    ]
    untouched = DeliveryFactory(
        user__email="notselected@example.com", status=Delivery.Status.FAILED
    )

    response = admin_client.post(
        reverse("admin:mailer_delivery_changelist"),
        {"action": "resend", "_selected_action": [row.pk for row in rows]},
        follow=True,
    )

    assert "Resent 2 failed mail(s)." in response.content.decode()
    for row in rows:
        wait_for_delivery(email=row.user.email, status="sent")
        assert len(smtp.mails_to(row.user.email)) == 1
    assert Delivery.objects.get(pk=untouched.pk).status == Delivery.Status.FAILED
    assert smtp.mails_to("notselected@example.com") == []
