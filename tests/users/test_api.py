import json

import pytest

from mailer.models import Delivery
from users.models import User

pytestmark = pytest.mark.django_db

URL = "/api/register"
PASSWORD = "correct horse battery staple"


def post_json(client, body, **extra):
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(URL, data=data, content_type="application/json", **extra)


def test_valid_registration_is_accepted_with_202_and_creates_one_account(client):
    response = post_json(client, {"email": "ada@example.com", "password": PASSWORD})

    assert response.status_code == 202
    assert response.json()["status"] == "accepted"
    assert User.objects.filter(email="ada@example.com", is_active=False).count() == 1
    assert Delivery.objects.filter(user__email="ada@example.com").count() == 1


def test_taken_address_in_any_case_answers_exactly_like_a_new_one(client):
    first = post_json(client, {"email": "ada@example.com", "password": PASSWORD})
    second = post_json(client, {"email": "ADA@example.COM", "password": PASSWORD})

    assert (second.status_code, second.content) == (first.status_code, first.content)
    assert User.objects.count() == 1
    kinds = sorted(Delivery.objects.values_list("kind", flat=True))
    assert kinds == ["account_exists", "welcome"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("{not json", "__all__"),
        (b"\xff\xfe", "__all__"),
        ("", "__all__"),
        ("[1, 2]", "__all__"),
        ("null", "__all__"),
        ('"a string"', "__all__"),
        ({"password": PASSWORD}, "email"),
        ({"email": "", "password": PASSWORD}, "email"),
        ({"email": None, "password": PASSWORD}, "email"),
        ({"email": "not-an-address", "password": PASSWORD}, "email"),
        (
            {"email": "a@example.com\r\nBcc: victim@example.org", "password": PASSWORD},
            "email",
        ),
        ({"email": "x" * 250 + "@example.com", "password": PASSWORD}, "email"),
        ({"email": ["ada@example.com"], "password": PASSWORD}, "email"),
        ({"email": {"$ne": ""}, "password": PASSWORD}, "email"),
        ({"email": "ada@example.com"}, "password"),
        ({"email": "ada@example.com", "password": ""}, "password"),
        ({"email": "ada@example.com", "password": "short"}, "password"),
        ({"email": "ada@example.com", "password": "12345678901"}, "password"),
        ({"email": "ada@example.com", "password": "password123"}, "password"),
        ({"email": "ada@example.com", "password": "p" * 129}, "password"),
        ({"email": "ada@example.com", "password": 12345678}, "password"),
        ({"email": "ada@example.com", "password": "nul\x00byte-password"}, "password"),
    ],
)
def test_bad_input_gets_400_with_field_errors_and_creates_nothing(client, body, field):
    response = post_json(client, body)

    assert response.status_code == 400
    errors = response.json()["errors"]
    assert field in errors and all(isinstance(m, str) and m for m in errors[field])
    assert User.objects.count() == 0
    assert Delivery.objects.count() == 0


def test_oversized_body_gets_413(client, settings):
    body = {
        "email": "ada@example.com",
        "password": "x" * settings.REGISTRATION_MAX_BODY_BYTES,
    }

    response = post_json(client, body)

    assert response.status_code == 413
    assert "errors" in response.json()
    assert User.objects.count() == 0


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
def test_other_methods_get_405(client, method):
    response = getattr(client, method)(URL)

    assert response.status_code == 405


def test_idn_address_is_accepted(client):
    response = post_json(
        client, {"email": "juergen@bücher.example", "password": PASSWORD}
    )

    assert response.status_code == 202
    assert User.objects.count() == 1
