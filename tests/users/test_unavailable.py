"""A registration that loses its database connection answers 503, not 500."""

import json

import pytest
from django.db import OperationalError, connection

from mailer.models import Delivery
from users.models import User

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"
BODY = {"email": "ada@example.com", "password": PASSWORD}


def backend_terminated(execute, sql, params, many, context):
    """The database drops the connection at the registration's first write."""
    if sql.lstrip().upper().startswith("INSERT"):
        raise OperationalError("terminating connection due to administrator command")
    return execute(sql, params, many, context)


def test_the_json_api_answers_503_with_retry_after_and_creates_nothing(client):
    with connection.execute_wrapper(backend_terminated):
        response = client.post(
            "/api/register", data=json.dumps(BODY), content_type="application/json"
        )

    assert response.status_code == 503
    assert response["Retry-After"] == "2"
    assert "briefly unavailable" in response.json()["errors"]["__all__"][0]
    assert not User.objects.exists()
    assert not Delivery.objects.exists()


def test_the_form_answers_a_503_page_in_the_registrants_language(client):
    with connection.execute_wrapper(backend_terminated):
        response = client.post("/register/", BODY, HTTP_ACCEPT_LANGUAGE="de")

    assert response.status_code == 503
    assert response["Retry-After"] == "2"
    assert "Kurz nicht erreichbar" in response.content.decode()
    assert not User.objects.exists()


def test_the_same_request_succeeds_once_the_database_answers_again(client):
    with connection.execute_wrapper(backend_terminated):
        first = client.post("/register/", BODY)
    second = client.post("/register/", BODY)

    assert (first.status_code, second.status_code) == (503, 302)
    assert User.objects.filter(email="ada@example.com").count() == 1
    assert Delivery.objects.count() == 1


def test_any_other_error_is_still_a_500_for_django_to_report(client, monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("users.views.register_user", broken)

    with pytest.raises(RuntimeError):
        client.post("/register/", BODY)
