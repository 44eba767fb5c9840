"""A taken address answers like a new one and its owner gets a notice instead."""

import re
import statistics
import time

import pytest

from mailer.models import Delivery
from mailer.tasks import send_welcome_email
from tests.factories import UserFactory
from tests.support import register
from users.models import User

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def _no_rate_limits(settings):
    settings.RATELIMIT_REGISTER_IP = ""
    settings.RATELIMIT_REGISTER_ADDRESS = ""


def send_all(kind):
    for delivery in Delivery.objects.filter(kind=kind, status="pending"):
        send_welcome_email.apply(args=(delivery.pk,))


def test_taken_address_gets_an_account_exists_notice_not_a_welcome(client, mailoutbox):
    owner = UserFactory(email="ada@example.com", is_active=True)

    response = register(client, "ADA@example.com", "an attacker's new password")

    assert response.status_code == 202
    assert list(owner.deliveries.values_list("kind", flat=True)) == ["account_exists"]
    send_all("account_exists")
    [mail] = mailoutbox
    assert mail.to == ["ada@example.com"]
    assert mail.subject == "You already have an account"
    assert "no new account was made" in mail.body
    assert "/activate/" not in mail.body  # active already: no link to follow
    owner.refresh_from_db()
    assert owner.check_password(PASSWORD)  # the account is untouched
    assert not owner.check_password("an attacker's new password")


def test_notice_to_an_account_awaiting_activation_carries_a_working_link(
    client, mailoutbox
):
    UserFactory(email="ada@example.com", is_active=False)
    register(client, "ada@example.com")

    send_all("account_exists")

    [mail] = mailoutbox
    path = re.search(r"http://testserver(/activate/[^/\s]+/)", mail.body).group(1)
    assert client.post(path).status_code == 302
    assert User.objects.get().is_active


def test_repeated_registrations_send_one_notice_per_interval(client, settings):
    settings.MAILER_NOTICE_INTERVAL = 3600
    UserFactory(email="ada@example.com")

    answers = {register(client, "ada@example.com").status_code for _ in range(4)}

    assert answers == {202}
    assert Delivery.objects.filter(kind="account_exists").count() == 1


def test_a_notice_goes_out_again_once_the_interval_has_passed(client, settings):
    UserFactory(email="ada@example.com")
    register(client, "ada@example.com")
    settings.MAILER_NOTICE_INTERVAL = 0

    register(client, "ada@example.com")

    assert Delivery.objects.filter(kind="account_exists").count() == 2


def test_form_answers_a_taken_address_exactly_like_a_new_one(client):
    UserFactory(email="taken@example.com")

    new = client.post("/register/", {"email": "new@example.com", "password": PASSWORD})
    taken = client.post(
        "/register/", {"email": "Taken@Example.com", "password": PASSWORD}
    )

    assert (taken.status_code, taken["Location"], taken.content) == (
        new.status_code,
        new["Location"],
        new.content,
    )
    assert Delivery.objects.filter(kind="account_exists").count() == 1


def test_a_taken_address_answers_in_about_the_time_of_a_new_one(client):
    UserFactory(email="taken@example.com")
    register(client, "warmup@example.com")  # first hash loads argon2
    new, taken = [], []
    for n in range(7):
        for timings, email in (
            (new, f"new{n}@example.com"),
            (taken, "taken@example.com"),
        ):
            started = time.perf_counter()
            response = register(client, email)
            timings.append(time.perf_counter() - started)
            assert response.status_code == 202

    ratio = statistics.median(taken) / statistics.median(new)
    # Both hash the password; a skipped hash would make this about 0.1.
    assert 0.5 < ratio < 2.0, (new, taken)
