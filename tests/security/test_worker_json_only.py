"""A real worker refuses task messages that are not JSON (pickle runs code)."""

import pytest

from celery_app import app
from mailer.models import Delivery
from tests.factories import DeliveryFactory
from tests.support import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_a_pickled_task_message_is_refused_and_sends_nothing(celery_worker, smtp):
    delivery = DeliveryFactory(user__email="pickle@example.com")

    app.send_task(
        "mailer.tasks.send_welcome_email", args=(delivery.pk,), serializer="pickle"
    )

    wait_until(
        lambda: "untrusted content of type pickle" in celery_worker.log(),
        timeout=20,
        what="the worker refusing the pickled message",
    )
    assert Delivery.objects.get(pk=delivery.pk).status == Delivery.Status.PENDING
    assert smtp.mails_to("pickle@example.com") == []

    # The same row in JSON is sent: the worker was alive and able all along.
    app.send_task("mailer.tasks.send_welcome_email", args=(delivery.pk,))
    wait_until(lambda: smtp.mails_to("pickle@example.com"), timeout=20, what="mail")
    assert len(smtp.mails_to("pickle@example.com")) == 1
