import logging
import re

import pytest
from celery.signals import task_prerun

from mailer.attempts import retry_countdown
from mailer.dispatch import FRESH_PRIORITY, WAITED_PRIORITY
from mailer.models import Delivery, RelayState
from mailer.tasks import send_account_mail, send_welcome_email
from tests.factories import DeliveryFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def delivery():
    return DeliveryFactory(user__email="ada@example.com")


def test_task_sends_text_and_html_with_activation_link_and_marks_sent(
    delivery, mailoutbox
):
    result = send_welcome_email.apply(args=(delivery.pk,))

    assert result.get() == "sent"
    [mail] = mailoutbox
    assert mail.to == ["ada@example.com"]
    assert mail.subject == "Welcome! Please activate your account"
    assert mail.extra_headers["Message-ID"] == delivery.message_id
    link = re.search(r"http://testserver/activate/[^/\s]+/", mail.body).group(0)
    html, mimetype = mail.alternatives[0]
    assert mimetype == "text/html" and link in html
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.SENT
    assert delivery.attempts == 1 and delivery.sent_at is not None


def test_task_run_twice_for_one_row_sends_one_mail(delivery, mailoutbox):
    first = send_welcome_email.apply(args=(delivery.pk,))
    second = send_welcome_email.apply(args=(delivery.pk,))

    assert (first.get(), second.get()) == ("sent", "skipped")
    assert len(mailoutbox) == 1


def test_task_skips_a_row_another_attempt_has_claimed(delivery, mailoutbox):
    Delivery.objects.filter(pk=delivery.pk).update(status=Delivery.Status.SENDING)

    assert send_welcome_email.apply(args=(delivery.pk,)).get() == "skipped"
    assert mailoutbox == []


@pytest.mark.parametrize(
    "reply",
    [
        "451 4.3.0 Try again later",
        "454 Throttling failure: Maximum sending rate exceeded.",
    ],
    ids=["retry", "throttled turn"],
)
def test_a_mail_sent_back_to_the_queue_is_published_ahead_of_fresh_mails(
    reply, delivery, smtp, real_smtp, settings
):
    settings.MAILER_RETRY_BACKOFF = 0.01
    smtp.script.replies["ada@example.com"] = [reply]
    priorities = []

    def seen(task=None, **kwargs):
        priorities.append(task.request.delivery_info.get("priority"))

    task_prerun.connect(seen, weak=False)
    try:
        result = send_welcome_email.apply(args=(delivery.pk,), priority=FRESH_PRIORITY)
    finally:
        task_prerun.disconnect(seen)

    assert result.get() == "sent"
    assert priorities == [FRESH_PRIORITY, WAITED_PRIORITY]


def test_transient_failure_is_retried_then_sent(delivery, smtp, real_smtp, settings):
    settings.MAILER_RETRY_BACKOFF = 0.01
    smtp.script.replies["ada@example.com"] = ["451 4.3.0 Try again later"] * 2

    result = send_welcome_email.apply(args=(delivery.pk,))

    assert result.get() == "sent"
    assert smtp.attempts["ada@example.com"] == 3
    assert len(smtp.mails_to("ada@example.com")) == 1
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.SENT
    assert delivery.attempts == 3 and delivery.retries == 2


def test_a_retry_is_logged_with_when_the_mail_comes_back(
    delivery, smtp, real_smtp, settings, caplog
):
    settings.MAILER_RETRY_BACKOFF = 0.2
    smtp.script.replies["ada@example.com"] = ["451 4.3.0 Try again later"]

    with caplog.at_level(logging.INFO, logger="mailer.tasks"):
        send_welcome_email.apply(args=(delivery.pk,))

    retry, sent = [r for r in caplog.records if r.name == "mailer.tasks"]
    assert "outcome=retry smtp_code=451" in retry.getMessage()
    assert re.search(r" retry_in_s=0\.[12]$", retry.getMessage())
    assert 0.1 <= retry.mail["retry_in_s"] <= 0.2
    assert "outcome=sent" in sent.getMessage()
    assert "retry_in_s" not in sent.getMessage()


def test_permanent_failure_marks_failed_with_reason_and_no_retry(
    delivery, smtp, real_smtp
):
    smtp.script.replies["ada@example.com"] = ["550 5.1.1 No such user here"]

    result = send_welcome_email.apply(args=(delivery.pk,))

    assert result.failed()
    assert smtp.attempts["ada@example.com"] == 1
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.FAILED
    assert delivery.smtp_code == 550
    assert "No such user here" in delivery.last_error


def test_exhausted_retries_mark_the_row_failed(delivery, smtp, real_smtp, settings):
    settings.MAILER_RETRY_BACKOFF = 0.01
    settings.MAILER_MAX_RETRIES = 2
    smtp.script.replies["ada@example.com"] = ["451 4.7.0 Try later"] * 10

    result = send_welcome_email.apply(args=(delivery.pk,))

    assert result.failed()
    assert smtp.attempts["ada@example.com"] == 3
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.FAILED
    assert delivery.smtp_code == 451 and "Try later" in delivery.last_error
    assert smtp.mails_to("ada@example.com") == []


def test_retry_budget_survives_a_redispatch(delivery, smtp, real_smtp, settings):
    settings.MAILER_MAX_RETRIES = 2
    Delivery.objects.filter(pk=delivery.pk).update(retries=2)
    smtp.script.replies["ada@example.com"] = ["451 4.7.1 Greylisted"]

    result = send_welcome_email.apply(args=(delivery.pk,))

    assert result.failed()
    assert Delivery.objects.get(pk=delivery.pk).status == Delivery.Status.FAILED


def test_unreachable_relay_parks_the_mail_without_spending_a_retry(delivery, real_smtp):
    real_smtp(port=1)  # nothing listens there

    result = send_welcome_email.apply(args=(delivery.pk,))

    assert result.get() == "parked"
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.PENDING
    assert delivery.waiting_for_relay and delivery.retries == 0
    assert "refused" in delivery.last_error.lower()
    assert RelayState.objects.get().down_since is not None


def test_421_for_everyone_parks_and_the_next_mail_waits_without_a_connection(
    smtp, real_smtp
):
    first = DeliveryFactory(user__email="a@example.com")
    second = DeliveryFactory(user__email="b@example.com")
    smtp.script.replies["a@example.com"] = ["421 4.3.2 Shutting down"]

    outcomes = [send_welcome_email.apply(args=(d.pk,)).get() for d in (first, second)]

    assert outcomes == ["parked", "parked"]
    assert smtp.connections == 1  # the second mail did not try the relay
    assert set(Delivery.objects.values_list("waiting_for_relay", "retries")) == {
        (True, 0)
    }


def test_greylisting_one_recipient_keeps_its_backoff_and_others_send(
    smtp, real_smtp, settings
):
    settings.MAILER_RETRY_BACKOFF = 0.01
    greylisted = DeliveryFactory(user__email="grey@example.com")
    other = DeliveryFactory(user__email="fine@example.com")
    smtp.script.replies["grey@example.com"] = ["451 4.7.1 Greylisted, come back"]

    assert send_welcome_email.apply(args=(greylisted.pk,)).get() == "sent"
    assert send_welcome_email.apply(args=(other.pk,)).get() == "sent"
    greylisted.refresh_from_db()
    assert greylisted.retries == 1 and not greylisted.waiting_for_relay
    assert not RelayState.objects.filter(down_since__isnull=False).exists()


def test_backoff_grows_exponentially_up_to_the_cap(settings):
    settings.MAILER_RETRY_BACKOFF = 30
    settings.MAILER_RETRY_BACKOFF_MAX = 600

    for retries, (low, high) in enumerate([(15, 30), (30, 60), (60, 120), (120, 240)]):
        assert low <= retry_countdown(retries) <= high
    assert 300 <= retry_countdown(20) <= 600


def test_one_smtp_connection_is_reused_across_sends(smtp, real_smtp):
    for n in range(3):
        delivery = DeliveryFactory(user__email=f"p{n}@example.com")
        send_welcome_email.apply(args=(delivery.pk,))

    assert len(smtp.received) == 3
    assert smtp.connections == 1


def test_a_notice_queued_under_the_welcome_task_name_is_still_sent(mailoutbox):
    notice = DeliveryFactory(kind=Delivery.Kind.ACCOUNT_EXISTS)

    assert send_welcome_email.apply(args=(notice.pk,)).get() == "sent"
    [mail] = mailoutbox
    assert mail.subject == "You already have an account"


def test_account_mail_task_sends_a_new_activation_link(mailoutbox):
    resend = DeliveryFactory(kind=Delivery.Kind.ACTIVATION)

    assert send_account_mail.apply(args=(resend.pk,)).get() == "sent"
    [mail] = mailoutbox
    assert mail.subject == "Your new activation link"
