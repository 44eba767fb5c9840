"""No CR/LF or second address from user input reaches a mail header."""

from email import message_from_bytes, policy

import pytest

from mailer.messages import SUBJECTS, build_message
from mailer.models import Delivery
from mailer.tasks import send_welcome_email
from tests.factories import DeliveryFactory

pytestmark = pytest.mark.django_db

HEADERS = {
    "content-type",
    "mime-version",
    "subject",
    "from",
    "to",
    "date",
    "message-id",
}


def wire_headers(message) -> list[tuple[str, str]]:
    parsed = message_from_bytes(message.message().as_bytes(), policy=policy.default)
    return [(name.lower(), str(value)) for name, value in parsed.items()]


@pytest.mark.parametrize("kind", list(Delivery.Kind))
def test_every_kind_has_a_fixed_subject_and_exactly_one_recipient(kind):
    delivery = DeliveryFactory(kind=kind, user__email="ada@example.com")

    headers = dict(wire_headers(build_message(delivery)))

    assert set(headers) == HEADERS
    assert headers["subject"] == SUBJECTS[kind]
    assert headers["to"] == "ada@example.com"
    assert headers["message-id"] == delivery.message_id


def test_an_idn_address_reaches_the_header_as_ascii_punycode():
    delivery = DeliveryFactory(user__email="juergen@bücher.example")

    headers = dict(wire_headers(build_message(delivery)))

    assert headers["to"] == "juergen@xn--bcher-kva.example"


@pytest.mark.parametrize(
    "stored",
    [
        "ada@example.com\r\nBcc: victim@example.org",
        "ada@example.com\nSubject: free money",
        "ada@example.com, victim@example.org",
        "Ada <ada@example.com>",
    ],
)
def test_a_stored_address_that_is_not_one_address_fails_the_row_and_sends_nothing(
    stored, mailoutbox
):
    # Registration refuses such addresses; this is data that got in some other way.
    delivery = DeliveryFactory(user__email="before@example.com")
    type(delivery.user).objects.filter(pk=delivery.user.pk).update(email=stored)

    result = send_welcome_email.apply(args=(delivery.pk,))

    assert result.failed()
    assert mailoutbox == []
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.FAILED
    assert delivery.smtp_code == 553
    assert delivery.attempts == 1
