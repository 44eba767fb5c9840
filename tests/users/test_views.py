import pytest
from django.test import Client

from mailer.models import Delivery
from tests.factories import UserFactory
from users.models import User
from users.tokens import make_activation_token

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


def test_registration_page_shows_the_form(client):
    response = client.get("/register/")

    assert response.status_code == 200
    assert b'name="email"' in response.content
    assert b'name="password"' in response.content
    assert b"csrfmiddlewaretoken" in response.content


def test_valid_form_redirects_to_done_page(client):
    response = client.post(
        "/register/", {"email": "ada@example.com", "password": PASSWORD}
    )

    assert response.status_code == 302
    assert response["Location"] == "/register/done/"
    assert User.objects.filter(email="ada@example.com").exists()


def test_taken_address_shows_the_same_done_page(client):
    UserFactory(email="ada@example.com")

    response = client.post(
        "/register/", {"email": "Ada@Example.com", "password": PASSWORD}
    )

    assert response.status_code == 302
    assert response["Location"] == "/register/done/"
    assert User.objects.count() == 1


def test_weak_password_and_bad_address_show_errors_on_the_form(client):
    response = client.post("/register/", {"email": "nope", "password": "123"})

    assert response.status_code == 400
    assert b"Enter a valid email address." in response.content
    assert b"This password is too short." in response.content
    assert not User.objects.exists()


def test_form_without_csrf_token_is_refused():
    response = Client(enforce_csrf_checks=True).post(
        "/register/", {"email": "ada@example.com", "password": PASSWORD}
    )

    assert response.status_code == 403
    assert not User.objects.exists()
    assert not Delivery.objects.exists()


def test_activation_get_shows_a_confirm_page_and_activates_nothing(client):
    user = UserFactory(is_active=False)

    response = client.get(f"/activate/{make_activation_token(user)}/")

    assert response.status_code == 200
    assert b"Activate my account" in response.content
    user.refresh_from_db()
    assert not user.is_active


def test_activation_post_activates_and_a_reused_link_gets_a_clear_page(client):
    user = UserFactory(is_active=False)
    url = f"/activate/{make_activation_token(user)}/"

    response = client.post(url)

    assert response.status_code == 302 and response["Location"] == "/activate/done/"
    user.refresh_from_db()
    assert user.is_active
    again = client.post(url)
    assert again.status_code == 400
    assert b"already been used" in again.content


def test_tampered_activation_link_gets_a_clear_page(client):
    user = UserFactory(is_active=False)
    token = make_activation_token(user)

    response = client.post(f"/activate/{token[:-2]}xx/")

    assert response.status_code == 400
    assert b"does not work" in response.content
    user.refresh_from_db()
    assert not user.is_active
