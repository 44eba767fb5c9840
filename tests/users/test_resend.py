"""Resending the activation mail: same answer for any address, mail only when due."""

import json
import re

import pytest
from django.utils import timezone

from mailer.models import Delivery
from mailer.tasks import send_welcome_email
from tests.factories import UserFactory
from users.models import User
from users.tokens import make_activation_token

pytestmark = pytest.mark.django_db

URL = "/api/activation/resend"


def resend(client, body):
    data = body if isinstance(body, str) else json.dumps(body)
    return client.post(URL, data, content_type="application/json")


def test_inactive_account_gets_a_new_link_that_activates_it(client, mailoutbox):
    user = UserFactory(email="ada@example.com", is_active=False)

    response = resend(client, {"email": "Ada@Example.com"})

    assert response.status_code == 202
    delivery = Delivery.objects.get(user=user, kind="activation")
    assert send_welcome_email.apply(args=(delivery.pk,)).get() == "sent"
    [mail] = mailoutbox
    assert mail.to == ["ada@example.com"]
    assert mail.subject == "Your new activation link"
    path = re.search(r"http://testserver(/activate/[^/\s]+/)", mail.body).group(1)
    assert path in mail.alternatives[0][0]
    assert client.post(path).status_code == 302
    user.refresh_from_db()
    assert user.is_active


@pytest.mark.parametrize(
    "state",
    ["no account", "active account", "deactivated by an admin"],
)
def test_every_other_address_gets_the_same_answer_and_no_mail(client, state):
    if state == "active account":
        UserFactory(email="ada@example.com", is_active=True)
    elif state == "deactivated by an admin":
        UserFactory(
            email="ada@example.com", is_active=False, activated_at=timezone.now()
        )
    UserFactory(email="waiting@example.com", is_active=False)
    reference = resend(client, {"email": "waiting@example.com"})

    response = resend(client, {"email": "ada@example.com"})

    assert (response.status_code, response.content) == (
        reference.status_code,
        reference.content,
    )
    assert not Delivery.objects.filter(user__email="ada@example.com").exists()


def test_repeated_requests_send_one_link_per_interval(client, settings):
    settings.MAILER_ACTIVATION_RESEND_INTERVAL = 900
    UserFactory(email="ada@example.com", is_active=False)

    answers = {
        resend(client, {"email": "ada@example.com"}).status_code for _ in range(3)
    }

    assert answers == {202}
    assert Delivery.objects.filter(kind="activation").count() == 1


@pytest.mark.parametrize(
    "body",
    ["{", "[]", {"email": None}, {"email": ["a@example.com"]}, {"email": "nope"}, {}],
)
def test_bad_input_gets_400_and_sends_nothing(client, body):
    UserFactory(email="a@example.com", is_active=False)

    response = resend(client, body)

    assert response.status_code == 400
    assert "errors" in response.json()
    assert not Delivery.objects.exists()


def test_the_form_answers_every_address_with_the_same_page(client):
    UserFactory(email="waiting@example.com", is_active=False)

    page = client.get("/activate/resend/")
    known = client.post("/activate/resend/", {"email": "waiting@example.com"})
    unknown = client.post("/activate/resend/", {"email": "nobody@example.com"})

    assert page.status_code == 200 and b'name="email"' in page.content
    assert known.status_code == unknown.status_code == 302
    assert known["Location"] == unknown["Location"] == "/activate/resend/done/"
    done = client.get(known["Location"])
    assert b"a new activation link is on its way" in done.content
    assert Delivery.objects.filter(kind="activation").count() == 1


def test_the_form_shows_errors_for_a_bad_address(client):
    response = client.post("/activate/resend/", {"email": "<b>nope</b>"})

    assert response.status_code == 400
    assert b"Enter a valid email address." in response.content
    assert b"<b>nope</b>" not in response.content
    assert not User.objects.exists()


def test_an_expired_link_page_offers_a_new_link(client, settings):
    user = UserFactory(is_active=False)
    token = make_activation_token(user)
    settings.ACCOUNT_ACTIVATION_MAX_AGE = -1

    response = client.post(f"/activate/{token}/")

    assert response.status_code == 400
    assert b"The link has expired." in response.content
    assert b'href="/activate/resend/"' in response.content
    user.refresh_from_db()
    assert not user.is_active


def test_activation_pages_are_not_cached(client):
    user = UserFactory(is_active=False)
    response = client.get(f"/activate/{make_activation_token(user)}/")

    assert "no-store" in response["Cache-Control"]
