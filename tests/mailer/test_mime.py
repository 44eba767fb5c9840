"""The cheaper MIME writing (mailer/mime.py) sends exactly the stock bytes."""

import email
import email.policy
import re

import django
import pytest
from django.core.mail import EmailMultiAlternatives
from django.utils import translation

from mailer.messages import SUBJECTS, build_message
from mailer.mime import PreparedMail
from tests.factories import DeliveryFactory

pytestmark = pytest.mark.django_db

CASES = [
    (kind, language)
    for kind in ("welcome", "account_exists", "activation")
    for language in ("en", "de", "es")
]
DATE = re.compile(rb"^Date: .*\r\n", re.MULTILINE)


def wire(mail) -> bytes:
    """Return the bytes Django's SMTP backend hands to smtplib for `mail`."""
    if django.VERSION >= (6, 0):
        return mail.message(policy=email.policy.SMTP).as_bytes()
    return mail.message().as_bytes(linesep="\r\n")


def stock_copy(mail: PreparedMail) -> EmailMultiAlternatives:
    plain = EmailMultiAlternatives()
    plain.__dict__.update(mail.__dict__)
    return plain


def boundary_of(data: bytes) -> str:
    return email.message_from_bytes(data, policy=email.policy.default).get_boundary()


@pytest.mark.parametrize(("kind", "language"), CASES)
def test_the_bytes_equal_the_stock_bytes_but_for_boundary_and_date(kind, language):
    delivery = DeliveryFactory(kind=kind, language=language)
    mail = build_message(delivery)
    assert isinstance(mail, PreparedMail)

    for _ in range(2):  # the second time from the per-process caches
        cheap = wire(mail)
        stock = wire(stock_copy(mail))
        stock = stock.replace(boundary_of(stock).encode(), boundary_of(cheap).encode())
        assert DATE.sub(b"", cheap) == DATE.sub(b"", stock)


@pytest.mark.parametrize(("kind", "language"), CASES)
def test_the_bytes_parse_back_to_the_same_headers_and_parts(kind, language):
    delivery = DeliveryFactory(
        kind=kind, language=language, user__email="ana@example.org"
    )
    mail = build_message(delivery)

    parsed = email.message_from_bytes(wire(mail), policy=email.policy.default)

    with translation.override(language):
        subject = str(SUBJECTS[kind])
    # Django 5.2's compat32 folding puts a long encoded Subject on its own
    # continuation line, stock bytes too: unfolded, it keeps one leading space.
    assert parsed["Subject"].lstrip() == subject
    assert parsed["Message-ID"] == delivery.message_id
    assert parsed["To"] == "ana@example.org"
    assert parsed["From"] == mail.from_email
    assert parsed.get_content_type() == "multipart/alternative"
    text = parsed.get_body(("plain",)).get_content()
    html = parsed.get_body(("html",)).get_content()
    assert text.replace("\r\n", "\n") == mail.body
    assert html.replace("\r\n", "\n") == mail.alternatives[0].content


def test_each_mail_gets_its_own_boundary():
    mail = build_message(DeliveryFactory())

    assert boundary_of(wire(mail)) != boundary_of(wire(mail))


def test_a_non_ascii_sender_name_is_encoded_as_stock(settings):
    settings.DEFAULT_FROM_EMAIL = "Équipe d’accueil <no-reply@example.com>"
    mail = build_message(DeliveryFactory(language="es"))

    cheap = wire(mail)
    stock = wire(stock_copy(mail))
    stock = stock.replace(boundary_of(stock).encode(), boundary_of(cheap).encode())
    assert DATE.sub(b"", cheap) == DATE.sub(b"", stock)
    parsed = email.message_from_bytes(cheap, policy=email.policy.default)
    assert parsed["From"].addresses[0].display_name == "Équipe d’accueil"


def test_a_type_mapped_on_the_cheaper_policy_applies_to_the_next_header():
    from email.headerregistry import AddressHeader

    from mailer.mime import fold_once

    own = email.policy.EmailPolicy(linesep="\r\n")  # its own header registry
    factory = fold_once(own).header_factory
    assert not issubclass(factory["X-Reviewer"], AddressHeader)

    factory.map_to_type("x-reviewer", AddressHeader)

    assert issubclass(factory["X-Reviewer"], AddressHeader)
    assert factory("X-Reviewer", "a@example.org").addresses[0].domain == "example.org"
