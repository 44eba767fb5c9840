"""A person registers, reads the welcome mail and activates, in real Chromium."""

import re

import pytest
from playwright.sync_api import expect

from mailer.models import Delivery
from tests.factories import UserFactory
from tests.support import wait_until
from users.models import User

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def _services(celery_worker, smtp):
    """The real worker sends through the suite's SMTP server."""


def register(page, *, email: str, password: str) -> None:
    page.goto("/register/")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Register").click()


def activation_link(mail) -> str:
    match = re.search(r"http://testserver/activate/[^/\s]+/", mail.text())
    assert match, mail.text()
    return match.group(0)


def test_a_person_registers_reads_the_mail_and_activates_the_account(
    page, screenshots, smtp
):
    page.goto("/register/")
    expect(page.get_by_role("heading", name="Create your account")).to_be_visible()
    screenshots.take("register-form")

    register(page, email="ada@example.com", password=PASSWORD)
    expect(page).to_have_url("http://testserver/register/done/")
    expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()
    screenshots.take("register-done")

    [mail] = wait_until(
        lambda: smtp.mails_to("ada@example.com"), timeout=20, what="welcome mail"
    )
    assert mail.message["Subject"] == "Welcome! Please activate your account"
    page.goto(activation_link(mail))
    expect(page.get_by_role("heading", name="Activate your account")).to_be_visible()
    screenshots.take("activate-confirm")
    assert not User.objects.get(email="ada@example.com").is_active

    page.get_by_role("button", name="Activate my account").click()
    expect(page.get_by_role("heading", name="Your account is active")).to_be_visible()
    screenshots.take("account-active")
    assert User.objects.get(email="ada@example.com").is_active

    page.goto(activation_link(mail))
    expect(page.get_by_text("The link has already been used")).to_be_visible()
    screenshots.take("link-used-twice")


def test_a_weak_password_and_a_mistyped_address_show_errors_on_the_form(
    page, screenshots
):
    page.goto("/register/")
    page.get_by_label("Email address").fill("ada.example.com")
    page.get_by_label("Password").fill("password")
    with page.expect_response("**/register/") as answer:
        page.get_by_role("button", name="Register").click()

    assert answer.value.status == 400
    form = page.locator("form")
    expect(form.get_by_text("Enter a valid email address.")).to_be_visible()
    expect(form.get_by_text("This password is too common.")).to_be_visible()
    expect(page.get_by_label("Email address")).to_have_value("ada.example.com")
    screenshots.take("form-errors")
    assert not User.objects.exists()


def test_an_address_that_has_an_account_sees_the_same_done_page(
    page, screenshots, smtp
):
    UserFactory(email="taken@example.com", is_active=True)

    register(page, email="new@example.com", password=PASSWORD)
    expect(page).to_have_url("http://testserver/register/done/")
    new_page_text = page.locator("main").inner_text()
    screenshots.take("done-for-new-address")

    register(page, email="Taken@Example.com", password=PASSWORD)
    expect(page).to_have_url("http://testserver/register/done/")
    assert page.locator("main").inner_text() == new_page_text
    screenshots.take("done-for-taken-address")

    wait_until(lambda: smtp.mails_to("new@example.com"), timeout=20, what="new mail")
    [notice] = wait_until(
        lambda: smtp.mails_to("taken@example.com"), timeout=20, what="notice"
    )
    assert notice.message["Subject"] == "You already have an account"
    assert User.objects.filter(email__iexact="taken@example.com").count() == 1
    kinds = Delivery.objects.filter(user__email="taken@example.com")
    assert list(kinds.values_list("kind", flat=True)) == ["account_exists"]
