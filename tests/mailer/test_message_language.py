"""Each mail is written in its outbox row's language: subject, text and HTML."""

import re

import pytest
from django.utils import translation

from mailer.messages import build_message
from mailer.models import Delivery
from mailer.tasks import send_account_mail, send_welcome_email
from tests.factories import DeliveryFactory, UserFactory
from users.services import (
    EmailAlreadyRegistered,
    register_user,
    request_activation_resend,
)
from users.tokens import read_activation_token

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"

# (kind, language) -> what the subject is and what the text and HTML say.
EXPECTED = {
    ("welcome", "de"): (
        "Willkommen! Bitte aktivieren Sie Ihr Konto",
        "Vielen Dank für Ihre Registrierung.",
        "Mein Konto aktivieren",
    ),
    ("welcome", "es"): (
        "¡Le damos la bienvenida! Active su cuenta, por favor",
        "Gracias por registrarse.",
        "Activar mi cuenta",
    ),
    ("welcome", "en"): (
        "Welcome! Please activate your account",
        "Thank you for registering.",
        "Activate my account",
    ),
    ("account_exists", "de"): (
        "Sie haben bereits ein Konto",
        "vielleicht Sie selbst",
        "Mein Konto aktivieren",
    ),
    ("account_exists", "es"): (
        "Ya tiene una cuenta",
        "quizá usted",
        "Activar mi cuenta",
    ),
    ("activation", "de"): (
        "Ihr neuer Aktivierungslink",
        "Sie haben einen neuen Link zur Aktivierung Ihres Kontos angefordert.",
        "Mein Konto aktivieren",
    ),
    ("activation", "es"): (
        "Su nuevo enlace de activación",
        "Ha solicitado un nuevo enlace para activar su cuenta.",
        "Activar mi cuenta",
    ),
}


def link_in(text: str) -> str:
    match = re.search(r"http://testserver/activate/([^/\s]+)/", text)
    assert match, text
    return match.group(1)


@pytest.mark.parametrize(("kind", "language"), list(EXPECTED))
def test_subject_text_and_html_are_in_the_row_language_with_a_working_link(
    kind, language
):
    subject, text_says, html_says = EXPECTED[kind, language]
    user = UserFactory(email="ada@example.com", is_active=False)
    delivery = DeliveryFactory(user=user, kind=kind, language=language)

    message = build_message(delivery)
    html = message.alternatives[0][0]

    assert message.subject == subject
    assert text_says in message.body
    assert html_says in html
    assert f'<html lang="{language}">' in html
    token = link_in(message.body)
    assert f'href="http://testserver/activate/{token}/"' in html
    assert read_activation_token(token) == user


@pytest.mark.parametrize(
    ("language", "days"),
    [
        ("de", "läuft in 3 Tagen ab"),
        ("es", "caduca en 3 días"),
        ("en", "expires in 3 days"),
    ],
)
def test_the_expiry_counts_days_in_the_row_language(language, days):
    delivery = DeliveryFactory(language=language)

    message = build_message(delivery)

    assert days in message.body
    assert days in message.alternatives[0][0]


def test_one_day_is_singular_in_every_language(settings):
    settings.ACCOUNT_ACTIVATION_MAX_AGE = 86400
    bodies = {
        language: build_message(DeliveryFactory(language=language)).body
        for language in ("en", "de", "es")
    }

    assert "expires in 1 day." in bodies["en"]
    assert "läuft in 1 Tag ab." in bodies["de"]
    assert "caduca en 1 día." in bodies["es"]


def test_rendering_leaves_the_worker_language_as_it_was():
    with translation.override("en"):
        build_message(DeliveryFactory(language="de"))

        assert translation.get_language() == "en"


def test_the_row_language_wins_over_a_later_change_on_the_user():
    delivery = DeliveryFactory(language="es")
    delivery.user.language = "de"
    delivery.user.save()

    assert build_message(delivery).subject.startswith("¡Le damos la bienvenida!")


def test_the_welcome_row_takes_the_language_of_the_registration(mailoutbox):
    user = register_user(email="ada@example.com", password=PASSWORD, language="de")
    delivery = Delivery.objects.get(user=user, kind="welcome")

    assert delivery.language == "de"
    assert send_welcome_email.apply(args=(delivery.pk,)).get() == "sent"
    [mail] = mailoutbox
    assert mail.subject == "Willkommen! Bitte aktivieren Sie Ihr Konto"


def test_the_account_exists_notice_takes_the_stored_language_of_the_account(
    mailoutbox,
):
    UserFactory(email="ada@example.com", language="es")

    with pytest.raises(EmailAlreadyRegistered):
        register_user(email="ada@example.com", password=PASSWORD, language="de")

    notice = Delivery.objects.get(user__email="ada@example.com", kind="account_exists")
    assert notice.language == "es"
    send_account_mail.apply(args=(notice.pk,)).get()
    [mail] = mailoutbox
    assert mail.subject == "Ya tiene una cuenta"


def test_the_activation_resend_takes_the_stored_language_of_the_account(mailoutbox):
    UserFactory(email="ada@example.com", language="de", is_active=False)

    with translation.override("es"):
        request_activation_resend(email="ada@example.com")

    resend = Delivery.objects.get(user__email="ada@example.com", kind="activation")
    assert resend.language == "de"
    send_account_mail.apply(args=(resend.pk,)).get()
    [mail] = mailoutbox
    assert mail.subject == "Ihr neuer Aktivierungslink"
