"""Notice and new activation link through the real broker, worker and SMTP server."""

import re

import pytest

from tests.support import register, wait_until
from users.models import User

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _services(celery_worker, smtp):
    """Every test here runs against the real worker, Redis and SMTP server."""


def subjects(smtp, address):
    return sorted(str(m.message["Subject"]) for m in smtp.mails_to(address))


def test_registering_twice_delivers_one_welcome_and_one_notice(client, smtp):
    first = register(client, "twice@example.com")
    wait_until(lambda: smtp.mails_to("twice@example.com"), timeout=20, what="welcome")

    second = register(client, "TWICE@example.com")
    wait_until(
        lambda: len(smtp.mails_to("twice@example.com")) == 2, timeout=20, what="notice"
    )

    assert (second.status_code, second.content) == (first.status_code, first.content)
    assert subjects(smtp, "twice@example.com") == [
        "Welcome! Please activate your account",
        "You already have an account",
    ]
    assert User.objects.filter(email__iexact="twice@example.com").count() == 1


def test_a_lost_welcome_is_replaced_by_a_resent_link_that_activates(client, smtp):
    smtp.script.replies["lost@example.com"] = ["552 5.2.2 Mailbox full for now"]
    register(client, "lost@example.com")
    wait_until(
        lambda: smtp.attempts["lost@example.com"] == 1, timeout=20, what="refusal"
    )

    response = client.post(
        "/api/activation/resend",
        {"email": "lost@example.com"},
        content_type="application/json",
    )

    assert response.status_code == 202
    [mail] = wait_until(
        lambda: smtp.mails_to("lost@example.com"), timeout=20, what="new link"
    )
    assert mail.message["Subject"] == "Your new activation link"
    path = re.search(r"http://testserver(/activate/[^/\s]+/)", mail.text()).group(1)
    assert client.post(path).status_code == 302
    assert User.objects.get(email="lost@example.com").is_active
