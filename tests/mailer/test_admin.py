"""The admin pages operators use to watch users, outbox rows and task results."""

import pytest
from django.urls import reverse
from django_celery_results.models import TaskResult

from mailer.models import Delivery
from tests.factories import DeliveryFactory, UserFactory

pytestmark = pytest.mark.django_db

DELIVERIES = reverse("admin:mailer_delivery_changelist")


@pytest.fixture
def failed():
    return DeliveryFactory(
        user__email="gone@example.com",
        status=Delivery.Status.FAILED,
        smtp_code=550,
        last_error="5.1.1 Mailbox does not exist",
    )


def test_delivery_list_shows_address_status_smtp_error_and_a_task_result_link(
    admin_client, failed
):
    page = admin_client.get(DELIVERIES).content.decode()

    assert "gone@example.com" in page
    assert "5.1.1 Mailbox does not exist" in page
    assert f"/admin/django_celery_results/taskresult/?task_id={failed.task_id}" in page


def test_the_task_result_link_opens_that_tasks_stored_results(admin_client, failed):
    TaskResult.objects.create(task_id=failed.task_id, status="FAILURE")
    TaskResult.objects.create(task_id="another-task", status="SUCCESS")

    page = admin_client.get(
        f"/admin/django_celery_results/taskresult/?task_id={failed.task_id}"
    )

    assert page.status_code == 200
    assert failed.task_id in page.content.decode()
    assert "another-task" not in page.content.decode()


def test_delivery_list_filters_by_status_and_searches_by_address(admin_client, failed):
    DeliveryFactory(user__email="fine@example.com", status=Delivery.Status.SENT)

    by_status = admin_client.get(DELIVERIES, {"status__exact": "failed"})
    by_address = admin_client.get(DELIVERIES, {"q": "fine@"})

    assert "gone@example.com" in by_status.content.decode()
    assert "fine@example.com" not in by_status.content.decode()
    assert "fine@example.com" in by_address.content.decode()
    assert "gone@example.com" not in by_address.content.decode()


def test_user_list_shows_activation_state_and_welcome_mail_status(admin_client):
    DeliveryFactory(user__email="waiting@example.com", status=Delivery.Status.SENT)
    UserFactory(email="nomail@example.com")

    page = admin_client.get(reverse("admin:users_user_changelist"))
    failed_only = admin_client.get(
        reverse("admin:users_user_changelist"), {"welcome_mail": "failed"}
    )

    html = page.content.decode()
    row = html[html.index("waiting@example.com") :].split("</tr>")[0]
    assert "Sent</a>" in row
    assert 'alt="False"' in row  # not activated yet
    assert "waiting@example.com" not in failed_only.content.decode()


def test_resend_action_refuses_a_sent_row_and_says_so(admin_client):
    sent = DeliveryFactory(status=Delivery.Status.SENT)

    response = admin_client.post(
        DELIVERIES,
        {"action": "resend", "_selected_action": [sent.pk]},
        follow=True,
    )

    assert f"Not resent (already sent): #{sent.pk}." in response.content.decode()
    assert Delivery.objects.get(pk=sent.pk).status == Delivery.Status.SENT


def test_outbox_rows_cannot_be_added_by_hand(admin_client):
    assert admin_client.get(reverse("admin:mailer_delivery_add")).status_code == 403
