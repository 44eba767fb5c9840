"""The registration page in the browser's language, and the language select."""

import re

import pytest
from playwright.sync_api import expect

from tests.support import wait_until
from users.models import User

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def _services(celery_worker, smtp):
    """The real worker sends through the suite's SMTP server."""


def test_a_german_browser_gets_german_pages_and_the_mail_in_the_chosen_language(
    page, screenshots, smtp
):
    page.set_extra_http_headers({"Accept-Language": "de-DE,de;q=0.9"})
    page.goto("/register/")
    expect(page.get_by_role("heading", name="Konto erstellen")).to_be_visible()
    language = page.get_by_label("Sprache")
    expect(language).to_have_value("de")
    screenshots.take("register-form-de")

    page.get_by_label("E-Mail-Adresse").fill("ada@example.com")
    page.get_by_label("Passwort").fill(PASSWORD)
    language.select_option(label="Español")
    page.get_by_role("button", name="Registrieren").click()
    expect(
        page.get_by_role("heading", name="Sehen Sie in Ihrem Posteingang nach")
    ).to_be_visible()

    [mail] = wait_until(
        lambda: smtp.mails_to("ada@example.com"), timeout=20, what="welcome mail"
    )
    assert mail.message["Subject"].strip().startswith("¡Le damos la bienvenida!")
    link = re.search(r"http://testserver/activate/[^/\s]+/", mail.text()).group(0)
    page.goto(link)
    page.get_by_role("button", name="Mein Konto aktivieren").click()
    expect(page.get_by_role("heading", name="Ihr Konto ist aktiviert")).to_be_visible()
    screenshots.take("account-active-de")
    assert User.objects.get(email="ada@example.com").is_active


def test_form_errors_show_in_the_browser_language(page):
    page.set_extra_http_headers({"Accept-Language": "es"})
    page.goto("/register/")
    page.get_by_label("Dirección de correo electrónico").fill("ada.example.com")
    page.get_by_label("Contraseña").fill("password")
    with page.expect_response("**/register/") as answer:
        page.get_by_role("button", name="Registrarse").click()

    assert answer.value.status == 400
    form = page.locator("form")
    expect(
        form.get_by_text("Introduzca una dirección de correo electrónico válida.")
    ).to_be_visible()
    expect(page.get_by_label("Idioma")).to_have_value("es")
