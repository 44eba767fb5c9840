"""The registrant's language: from the body, the form, the cookie or Accept-Language."""

import json

import pytest

from mailer.models import Delivery
from tests.factories import UserFactory
from users.languages import supported_language
from users.models import User
from users.services import register_user
from users.tokens import make_activation_token

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


def api_register(client, email: str, **body_and_headers):
    headers = {k: v for k, v in body_and_headers.items() if k.isupper()}
    body = {"email": email, "password": PASSWORD}
    body.update({k: v for k, v in body_and_headers.items() if not k.isupper()})
    return client.post(
        "/api/register", json.dumps(body), content_type="application/json", **headers
    )


def language_of(email: str) -> str:
    return User.objects.get(email=email).language


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("de", "de"),
        ("es", "es"),
        ("en", "en"),
        ("de-DE", "de"),
        ("DE", "de"),
        ("es-419", "es"),
        ("de_AT", "de"),
        ("en-us", "en"),
        ("xx", "en"),
        ("fr", "en"),
        ("", "en"),
        ("../etc", "en"),
        ("de;q=1", "en"),
        ("d" * 10_000, "en"),
        ("\ud800", "en"),
        (42, "en"),
        (None, "en"),
        (["de"], "en"),
        ({"de": 1}, "en"),
    ],
)
def test_any_code_maps_to_one_of_languages_or_falls_back(code, expected):
    assert supported_language(code) == expected


def test_the_fallback_is_language_code(settings):
    settings.LANGUAGE_CODE = "es"

    assert supported_language("xx") == "es"


def test_accept_language_decides_without_an_explicit_choice(client):
    api_register(client, "ada@example.com", HTTP_ACCEPT_LANGUAGE="de-DE,de;q=0.9")

    assert language_of("ada@example.com") == "de"


def test_accept_language_takes_the_first_supported_in_order_of_preference(client):
    header = "fr-FR,fr;q=0.9,es;q=0.8,de;q=0.7"
    api_register(client, "ada@example.com", HTTP_ACCEPT_LANGUAGE=header)

    assert language_of("ada@example.com") == "es"


def test_the_language_cookie_wins_over_accept_language(client):
    client.cookies["django_language"] = "es"

    api_register(client, "ada@example.com", HTTP_ACCEPT_LANGUAGE="de")

    assert language_of("ada@example.com") == "es"


def test_an_explicit_language_wins_over_cookie_and_header(client):
    client.cookies["django_language"] = "de"

    api_register(client, "ada@example.com", language="es", HTTP_ACCEPT_LANGUAGE="de")

    assert language_of("ada@example.com") == "es"


def test_no_language_anywhere_is_language_code(client):
    api_register(client, "ada@example.com")

    assert language_of("ada@example.com") == "en"


def test_an_unsupported_request_language_is_language_code(client):
    api_register(client, "ada@example.com", HTTP_ACCEPT_LANGUAGE="fr-FR,ja")

    assert language_of("ada@example.com") == "en"


@pytest.mark.parametrize(
    "bad", ["xx", 42, "../etc", ["de"], {"de": 1}, True, "d" * 500]
)
def test_a_bad_explicit_language_is_accepted_and_falls_back(client, bad):
    response = api_register(
        client, "ada@example.com", language=bad, HTTP_ACCEPT_LANGUAGE="de"
    )

    assert response.status_code == 202
    assert language_of("ada@example.com") == "en"


@pytest.mark.parametrize("empty", [None, ""])
def test_an_empty_explicit_language_means_the_request_decides(client, empty):
    api_register(client, "ada@example.com", language=empty, HTTP_ACCEPT_LANGUAGE="de")

    assert language_of("ada@example.com") == "de"


def test_a_regional_variant_is_stored_as_its_language(client):
    api_register(client, "ada@example.com", language="es-MX")

    assert language_of("ada@example.com") == "es"


def test_a_bad_language_still_gets_the_same_answer_as_a_taken_address(client):
    UserFactory(email="taken@example.com")

    new = api_register(client, "new@example.com", language="xx")
    taken = api_register(client, "taken@example.com", language="xx")

    assert (new.status_code, new.content) == (taken.status_code, taken.content)


def test_the_answer_is_in_the_request_language_and_the_same_for_a_taken_address(
    client,
):
    UserFactory(email="taken@example.com")

    new = api_register(client, "new@example.com", HTTP_ACCEPT_LANGUAGE="de")
    taken = api_register(client, "taken@example.com", HTTP_ACCEPT_LANGUAGE="de")

    assert new.status_code == 202
    assert "Posteingang" in new.json()["detail"]
    assert (new.status_code, new.content) == (taken.status_code, taken.content)


def test_form_errors_of_the_api_are_in_the_request_language(client):
    response = client.post(
        "/api/register",
        json.dumps({"email": "nope", "password": "123"}),
        content_type="application/json",
        HTTP_ACCEPT_LANGUAGE="es",
    )

    assert response.status_code == 400
    errors = response.json()["errors"]
    assert errors["email"] == ["Introduzca una dirección de correo electrónico válida."]
    assert any("demasiado corta" in message for message in errors["password"])


def test_a_taken_address_keeps_its_stored_language(client):
    UserFactory(email="ada@example.com", language="es")

    api_register(client, "ada@example.com", language="de")

    assert language_of("ada@example.com") == "es"
    notice = Delivery.objects.get(user__email="ada@example.com", kind="account_exists")
    assert notice.language == "es"


def test_the_service_stores_a_supported_language_and_defaults_otherwise():
    assert register_user(email="a@example.com", password=PASSWORD).language == "en"
    assert (
        register_user(
            email="b@example.com", password=PASSWORD, language="de-CH"
        ).language
        == "de"
    )
    assert (
        register_user(email="c@example.com", password=PASSWORD, language="xx").language
        == "en"
    )


# --- The HTML form ------------------------------------------------------------


def test_the_form_preselects_the_request_language(client):
    response = client.get("/register/", HTTP_ACCEPT_LANGUAGE="es-ES,es;q=0.9")

    assert response.status_code == 200
    assert b'<option value="es" selected>' in response.content
    assert '<html lang="es">' in response.content.decode()
    assert "Cree su cuenta" in response.content.decode()


def test_the_form_lists_every_language_by_its_own_name(client):
    page = client.get("/register/").content.decode()

    for code, name in (("en", "English"), ("de", "Deutsch"), ("es", "Español")):
        assert f'<option value="{code}"' in page and name in page


def test_the_language_chosen_on_the_form_is_stored(client):
    client.post(
        "/register/",
        {"email": "ada@example.com", "password": PASSWORD, "language": "de"},
        HTTP_ACCEPT_LANGUAGE="es",
    )

    assert language_of("ada@example.com") == "de"


def test_a_form_without_a_choice_takes_the_request_language(client):
    client.post(
        "/register/",
        {"email": "ada@example.com", "password": PASSWORD},
        HTTP_ACCEPT_LANGUAGE="es",
    )

    assert language_of("ada@example.com") == "es"


def test_a_forged_form_choice_falls_back_without_a_form_error(client):
    response = client.post(
        "/register/",
        {"email": "ada@example.com", "password": PASSWORD, "language": "../etc"},
        HTTP_ACCEPT_LANGUAGE="de",
    )

    assert response.status_code == 302
    assert language_of("ada@example.com") == "en"


def test_form_errors_are_in_the_request_language(client):
    response = client.post(
        "/register/", {"email": "nope", "password": "123"}, HTTP_ACCEPT_LANGUAGE="de"
    )

    page = response.content.decode()
    assert response.status_code == 400
    assert "Bitte gültige E-Mail-Adresse eingeben." in page
    assert "Dieses Passwort ist zu kurz." in page
    assert "E-Mail-Adresse" in page and "Passwort" in page


def test_the_local_part_error_is_translated(client):
    response = client.post(
        "/register/",
        {"email": "a" * 65 + "@example.com", "password": PASSWORD},
        HTTP_ACCEPT_LANGUAGE="de",
    )

    assert response.status_code == 400
    assert "Der Teil vor dem @ darf höchstens 64 Zeichen lang sein." in (
        response.content.decode()
    )


# --- The pages a registrant sees ------------------------------------------------


@pytest.mark.parametrize(
    ("path", "german", "spanish"),
    [
        ("/register/done/", "Sehen Sie in Ihrem Posteingang nach", "Revise su bandeja"),
        ("/activate/done/", "Ihr Konto ist aktiviert", "Su cuenta está activada"),
        ("/activate/resend/", "Neuen Aktivierungslink anfordern", "Solicitar un nuevo"),
        ("/activate/not-a-token/", "funktioniert nicht", "no funciona"),
    ],
)
def test_every_page_follows_the_request_language(client, path, german, spanish):
    in_german = client.get(path, HTTP_ACCEPT_LANGUAGE="de").content.decode()
    in_spanish = client.get(path, HTTP_ACCEPT_LANGUAGE="es").content.decode()

    assert german in in_german and '<html lang="de">' in in_german
    assert spanish in in_spanish and '<html lang="es">' in in_spanish


def test_the_activation_page_follows_the_request_not_the_account(client):
    user = UserFactory(email="ada@example.com", language="es", is_active=False)
    path = f"/activate/{make_activation_token(user)}/"

    page = client.get(path, HTTP_ACCEPT_LANGUAGE="de").content.decode()

    assert "Mein Konto aktivieren" in page
    assert '<html lang="de">' in page


def test_the_password_rules_under_the_field_are_in_the_request_language(client):
    page = client.get("/register/", HTTP_ACCEPT_LANGUAGE="de").content.decode()

    assert "Das Passwort muss mindestens 8 Zeichen enthalten." in page
    assert "Your password" not in page


def test_the_language_cookie_sets_the_page_language(client):
    client.cookies["django_language"] = "es"

    page = client.get("/register/", HTTP_ACCEPT_LANGUAGE="de").content.decode()

    assert "Cree su cuenta" in page


def test_the_too_many_page_is_translated(client, settings):
    settings.RATELIMIT_REGISTER_IP = "1/h"
    body = {"email": "ada@example.com", "password": PASSWORD}
    client.post("/register/", body, HTTP_ACCEPT_LANGUAGE="de")

    response = client.post("/register/", body, HTTP_ACCEPT_LANGUAGE="de")

    assert response.status_code == 429
    assert "Zu viele Versuche" in response.content.decode()


def test_the_api_document_names_exactly_the_shipped_languages(settings):
    from project.openapi import LANGUAGES

    assert LANGUAGES == [code for code, _name in settings.LANGUAGES]


def test_a_missing_page_answers_404_in_the_request_language(client):
    response = client.get("/no-such-page/", HTTP_ACCEPT_LANGUAGE="de")

    assert response.status_code == 404
    assert "<h1>Seite nicht gefunden</h1>" in response.content.decode()


@pytest.mark.parametrize(
    ("language", "heading"),
    [
        ("en", "Something went wrong"),
        ("de", "Etwas ist schiefgelaufen"),
        ("es", "Algo ha salido mal"),
    ],
)
def test_the_server_error_page_is_in_the_active_language(rf, language, heading):
    from django.utils import translation
    from django.views.defaults import server_error

    with translation.override(language):
        response = server_error(rf.get("/register/"))

    assert response.status_code == 500
    assert f"<h1>{heading}</h1>" in response.content.decode()
