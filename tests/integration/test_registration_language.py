"""A registrant's language, end to end: real broker, worker and SMTP server."""

import json
import re

import pytest

from tests.support import wait_for_delivery, wait_until
from users.models import User

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def _services(celery_worker, smtp):
    """Every test here runs against the real worker, Redis and SMTP server."""


def wait_for_mail(smtp, address: str):
    [mail] = wait_until(
        lambda: smtp.mails_to(address), timeout=20, what=f"mail to {address}"
    )
    return mail


def subject(mail) -> str:
    # Django folds a long encoded Subject right after the colon; Python's
    # parser keeps that fold's space, which mail clients drop.
    return mail.message["Subject"].strip()


def activation_path(mail) -> str:
    match = re.search(r"http://testserver(/activate/[^/\s]+/)", mail.text())
    assert match, mail.text()
    assert f'href="{match.group(0)}"' in mail.html()
    return match.group(1)


def test_accept_language_de_gets_a_german_mail_and_a_german_activation_page(
    client, smtp
):
    response = client.post(
        "/api/register",
        json.dumps({"email": "ada@example.com", "password": PASSWORD}),
        content_type="application/json",
        HTTP_ACCEPT_LANGUAGE="de-DE,de;q=0.9,en;q=0.8",
    )
    assert response.status_code == 202

    mail = wait_for_mail(smtp, "ada@example.com")
    assert subject(mail) == "Willkommen! Bitte aktivieren Sie Ihr Konto"
    assert "Vielen Dank für Ihre Registrierung." in mail.text()
    assert "läuft in 3 Tagen ab" in mail.text()
    assert '<html lang="de">' in mail.html()
    assert "Mein Konto aktivieren" in mail.html()

    # The person opens the link in a browser that asks for German.
    path = activation_path(mail)
    page = client.get(path, HTTP_ACCEPT_LANGUAGE="de").content.decode()
    assert "<h1>Konto aktivieren</h1>" in page
    done = client.post(path, HTTP_ACCEPT_LANGUAGE="de", follow=True)
    assert "Ihr Konto ist aktiviert" in done.content.decode()
    assert User.objects.get(email="ada@example.com").is_active
    delivery = wait_for_delivery(email="ada@example.com", status="sent", timeout=5)
    assert delivery.language == "de"


def test_language_es_in_the_body_gets_a_spanish_mail_and_activation_page(client, smtp):
    body = {"email": "grace@example.com", "password": PASSWORD, "language": "es"}
    response = client.post(
        "/api/register",
        json.dumps(body),
        content_type="application/json",
        HTTP_ACCEPT_LANGUAGE="de",
    )
    assert response.status_code == 202

    mail = wait_for_mail(smtp, "grace@example.com")
    assert subject(mail) == "¡Le damos la bienvenida! Active su cuenta, por favor"
    assert "Gracias por registrarse." in mail.text()
    assert "Activar mi cuenta" in mail.html()

    path = activation_path(mail)
    page = client.get(path, HTTP_ACCEPT_LANGUAGE="es").content.decode()
    assert "<h1>Active su cuenta</h1>" in page
    assert client.post(path).status_code == 302
    assert User.objects.get(email="grace@example.com").is_active


def test_the_form_choice_decides_the_mail_and_a_repeat_notice_keeps_it(client, smtp):
    client.post(
        "/register/",
        {"email": "alan@example.com", "password": PASSWORD, "language": "es"},
        HTTP_ACCEPT_LANGUAGE="de",
    )
    welcome = wait_for_mail(smtp, "alan@example.com")
    assert subject(welcome).startswith("¡Le damos la bienvenida!")

    # Someone registers the address again from a German browser: the notice
    # goes to the account's owner, in the account's language.
    client.post(
        "/api/register",
        json.dumps({"email": "alan@example.com", "password": PASSWORD}),
        content_type="application/json",
        HTTP_ACCEPT_LANGUAGE="de",
    )
    wait_until(
        lambda: len(smtp.mails_to("alan@example.com")) == 2,
        timeout=20,
        what="the account-exists notice",
    )
    notice = smtp.mails_to("alan@example.com")[1]
    assert subject(notice) == "Ya tiene una cuenta"
    assert "quizá usted" in notice.text()
