"""Registration to activation through a real broker, worker and SMTP server."""

import re
import time

import pytest

from mailer.models import Delivery
from tests.support import register, wait_for_delivery, wait_until
from users.models import User

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def _services(celery_worker, smtp):
    """Every test here runs against the real worker, Redis and SMTP server."""


def activation_path(mail) -> str:
    match = re.search(r"http://testserver(/activate/[^/\s]+/)", mail.text())
    assert match, mail.text()
    assert match.group(0) in mail.html()
    return match.group(1)


def wait_for_mail(smtp, address: str, *, timeout: float = 20):
    return wait_until(
        lambda: smtp.mails_to(address), timeout=timeout, what=f"mail to {address}"
    )


def test_api_registration_delivers_a_welcome_mail_whose_link_activates(client, smtp):
    response = register(client, "ada@example.com")
    assert response.status_code == 202

    [mail] = wait_for_mail(smtp, "ada@example.com")
    assert mail.message["Subject"] == "Welcome! Please activate your account"
    path = activation_path(mail)
    assert client.get(path).status_code == 200
    assert not User.objects.get(email="ada@example.com").is_active
    assert client.post(path).status_code == 302
    assert User.objects.get(email="ada@example.com").is_active

    delivery = wait_for_delivery(email="ada@example.com", status="sent", timeout=5)
    assert mail.message["Message-ID"] == delivery.message_id
    assert len(smtp.mails_to("ada@example.com")) == 1


def test_form_registration_delivers_a_welcome_mail_whose_link_activates(client, smtp):
    response = client.post(
        "/register/", {"email": "grace@example.com", "password": PASSWORD}
    )
    assert response.status_code == 302

    [mail] = wait_for_mail(smtp, "grace@example.com")
    assert client.post(activation_path(mail)).status_code == 302
    assert User.objects.get(email="grace@example.com").is_active


def test_registration_answers_at_once_while_the_relay_stalls(client, smtp):
    smtp.script.delay = 4.0

    started = time.monotonic()
    response = register(client, "stalled@example.com")
    elapsed = time.monotonic() - started

    assert response.status_code == 202
    assert elapsed < 0.5, f"registration took {elapsed:.2f}s"
    wait_for_mail(smtp, "stalled@example.com", timeout=20)


def test_transient_smtp_failures_are_retried_and_the_mail_arrives_once(client, smtp):
    smtp.script.replies["retry@example.com"] = ["451 4.3.0 Try again later"] * 2

    register(client, "retry@example.com")

    wait_for_mail(smtp, "retry@example.com")
    delivery = wait_for_delivery(email="retry@example.com", status="sent", timeout=5)
    assert delivery.attempts == 3
    assert smtp.attempts["retry@example.com"] == 3
    assert len(smtp.mails_to("retry@example.com")) == 1


def test_permanent_smtp_failure_marks_the_row_failed_without_retry(client, smtp):
    smtp.script.replies["gone@example.com"] = ["550 5.1.1 Mailbox does not exist"]

    register(client, "gone@example.com")

    delivery = wait_for_delivery(email="gone@example.com", status="failed")
    assert delivery.smtp_code == 550
    assert "Mailbox does not exist" in delivery.last_error
    time.sleep(1.5)  # longer than the worker's backoff: no retry follows
    assert smtp.attempts["gone@example.com"] == 1
    assert smtp.mails_to("gone@example.com") == []


def test_every_attempt_is_stored_as_a_task_result(client, smtp):
    from django_celery_results.models import TaskResult

    register(client, "stored@example.com")
    wait_for_mail(smtp, "stored@example.com")
    delivery = Delivery.objects.get(user__email="stored@example.com")

    result = wait_until(
        lambda: TaskResult.objects.filter(
            task_id=delivery.task_id, status="SUCCESS"
        ).first(),
        timeout=5,
        what="stored task result",
    )
    assert result.task_name == "mailer.tasks.send_welcome_email"
    assert "stored@example.com" not in (result.task_args or "") + (
        result.task_kwargs or ""
    )
    assert str(delivery.pk) in result.task_args


def test_the_worker_logs_each_attempt_once_and_celerys_receipt(
    client, smtp, celery_worker
):
    register(client, "log@example.com")
    delivery = wait_for_delivery(email="log@example.com", status="sent", timeout=20)

    def logged() -> list[str]:
        return [x for x in celery_worker.log().splitlines() if delivery.task_id in x]

    lines = wait_until(lambda: len(logged()) >= 2 and logged(), timeout=5, what="log")
    assert [line.split("] ", 1)[1] for line in lines] == [
        f"Task mailer.tasks.send_welcome_email[{delivery.task_id}] received",
        f"welcome mail delivery={delivery.pk} task={delivery.task_id} attempt=1 "
        f"outcome=sent smtp_code=250 duration_ms="
        + lines[1].rsplit("duration_ms=", 1)[1],
    ]
    assert "succeeded in" not in celery_worker.log()
