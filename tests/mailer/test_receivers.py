from unittest import mock

import pytest
from django.core import management
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import OperationalError

from mailer.dispatch import FRESH_PRIORITY
from mailer.models import Delivery
from users.models import User
from users.services import EmailAlreadyRegistered, register_user

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


@pytest.fixture
def published():
    """Task ids the on-commit dispatch published (broker call replaced)."""
    with mock.patch("celery_app.app.send_task") as send_task:
        yield send_task


def test_registration_writes_one_pending_row_and_dispatches_it_on_commit(
    django_capture_on_commit_callbacks, published
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        user = register_user(email="ada@example.com", password=PASSWORD)

    delivery = Delivery.objects.get(user=user)
    assert delivery.status == Delivery.Status.PENDING
    assert delivery.kind == Delivery.Kind.WELCOME
    assert len(callbacks) == 1
    published.assert_called_once_with(
        "mailer.tasks.send_welcome_email",
        args=(delivery.pk,),
        task_id=delivery.task_id,
        priority=FRESH_PRIORITY,
    )


def test_rolled_back_registration_leaves_no_row_and_dispatches_nothing(
    django_capture_on_commit_callbacks, published
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(RuntimeError), transaction.atomic():
            register_user(email="ada@example.com", password=PASSWORD)
            raise RuntimeError("something later in the request failed")

    assert callbacks == []
    assert not Delivery.objects.exists()
    assert not User.objects.exists()
    published.assert_not_called()


def test_admin_created_user_and_updates_dispatch_nothing(
    django_capture_on_commit_callbacks, published
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        user = User.objects.create_user("staff@example.com", PASSWORD)
        user.is_active = True
        user.save()

    assert callbacks == []
    assert not Delivery.objects.exists()


def test_fixture_load_dispatches_nothing(
    tmp_path, django_capture_on_commit_callbacks, published
):
    fixture = tmp_path / "users.json"
    fixture.write_text(
        '[{"model": "users.user", "pk": 50, "fields": {"email": "f@example.com",'
        ' "password": "!", "date_joined": "2026-01-01T00:00:00Z"}}]'
    )

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        management.call_command("loaddata", str(fixture), verbosity=0)

    assert User.objects.filter(pk=50).exists()
    assert callbacks == []
    assert not Delivery.objects.exists()


def test_broker_error_after_commit_is_logged_not_raised(
    django_capture_on_commit_callbacks, caplog
):
    refused = OperationalError("Error 111 connecting to 127.0.0.1:6379.")
    with mock.patch("celery_app.app.send_task", side_effect=refused):
        with django_capture_on_commit_callbacks(execute=True):
            user = register_user(email="ada@example.com", password=PASSWORD)

    assert Delivery.objects.get(user=user).status == Delivery.Status.PENDING
    assert f"Dispatch of delivery {user.deliveries.get().pk} failed" in caplog.text
    assert "Error 111" in caplog.text


def test_a_repeated_registration_publishes_the_notice_under_its_own_task(
    django_capture_on_commit_callbacks, published
):
    register_user(email="ada@example.com", password=PASSWORD)
    published.reset_mock()

    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(EmailAlreadyRegistered):
            register_user(email="ada@example.com", password=PASSWORD)

    notice = Delivery.objects.get(kind=Delivery.Kind.ACCOUNT_EXISTS)
    published.assert_called_once_with(
        "mailer.tasks.send_account_mail",
        args=(notice.pk,),
        task_id=notice.task_id,
        priority=FRESH_PRIORITY,
    )


def test_after_a_broker_error_the_next_registrations_skip_the_broker_and_stay_due(
    django_capture_on_commit_callbacks,
):
    refused = OperationalError("Error 111 connecting to 127.0.0.1:6379.")
    with mock.patch("celery_app.app.send_task", side_effect=refused) as send_task:
        with django_capture_on_commit_callbacks(execute=True):
            register_user(email="first@example.com", password=PASSWORD)
        with django_capture_on_commit_callbacks(execute=True):
            second = register_user(email="second@example.com", password=PASSWORD)

    assert send_task.call_count == 1  # the second answered without waiting
    row = Delivery.objects.get(user=second)
    assert row.status == Delivery.Status.PENDING
    assert row.lease_expires_at <= timezone.now()  # due: the lifeline publishes it
