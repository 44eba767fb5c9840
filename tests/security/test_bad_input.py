"""Hostile input over the JSON API and the forms: never a 5xx, a half-made account,
or a mail to an injected address."""

import json

import pytest
from django.db import connection
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from mailer.models import Delivery
from users.models import User

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"
INJECTED = "victim@example.org"


@pytest.fixture(autouse=True)
def _no_rate_limits(settings):
    for name in ("REGISTER", "RESEND"):
        setattr(settings, f"RATELIMIT_{name}_IP", "")
        setattr(settings, f"RATELIMIT_{name}_ADDRESS", "")


def post_json(client, url, body):
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(url, data=data, content_type="application/json")


def assert_nothing_made(mailoutbox=()):
    assert User.objects.count() == 0
    assert Delivery.objects.count() == 0
    assert not any(INJECTED in " ".join(m.recipients()) for m in mailoutbox)


REJECTED_BODIES = [
    pytest.param("[" * 5000 + "]" * 5000, id="arrays-nested-5000-deep"),
    pytest.param('{"email": ' + "1" * 5000 + "}", id="integer-past-digit-limit"),
    pytest.param('{"email": NaN, "password": Infinity}', id="nan-and-infinity"),
    pytest.param('{"email": "\\udfff@example.com", "password": "x"}', id="surrogate"),
    pytest.param('{"email": true, "password": false}', id="booleans"),
    pytest.param('{"email": 1e999}', id="float-overflow"),
    pytest.param("\ufeff{}", id="bom-and-empty"),
    pytest.param(b'{"email": "a@example.com"\x00}', id="nul-byte-in-json"),
    pytest.param({"email": f"a@example.com\r\nBcc: {INJECTED}", "password": PASSWORD}),
    pytest.param({"email": f"a@example.com\nCc: {INJECTED}", "password": PASSWORD}),
    pytest.param({"email": f"a@example.com, {INJECTED}", "password": PASSWORD}),
    pytest.param({"email": f"a@example.com;{INJECTED}", "password": PASSWORD}),
    pytest.param({"email": f"Ada <{INJECTED}>", "password": PASSWORD}),
    pytest.param({"email": f"{INJECTED}%0d%0aBcc:x@example.com", "password": "p"}),
    pytest.param({"email": "<script>alert(1)</script>@example.com", "password": "p"}),
    pytest.param({"email": "' OR '1'='1@example.com", "password": PASSWORD}),
    pytest.param(
        {"email": "a@example.com'; DROP TABLE users_user;--", "password": "p"}
    ),
    pytest.param(
        {"email": "jürgen@example.com", "password": PASSWORD}, id="utf8-local"
    ),
    pytest.param({"email": "a@" + "b" * 64 + ".example", "password": PASSWORD}),
    pytest.param({"email": "a" * 65 + "@example.com", "password": PASSWORD}),
    pytest.param({"email": {"$gt": ""}, "password": PASSWORD}, id="operator-object"),
]

BAD_PASSWORDS = [
    pytest.param('{"email": "a@example.com", "password": "\\ud800xyz correct horse"}'),
    pytest.param({"email": "a@example.com", "password": "x" * 10_000}, id="long-pass"),
    pytest.param({"email": "a@example.com", "password": None}, id="null-password"),
    pytest.param({"email": "a@example.com", "password": [PASSWORD]}, id="array-pw"),
]


@pytest.mark.parametrize("body", REJECTED_BODIES + BAD_PASSWORDS)
def test_registration_api_rejects_hostile_bodies_with_a_4xx(client, body, mailoutbox):
    response = post_json(client, "/api/register", body)

    assert 400 <= response.status_code < 500
    assert "errors" in response.json()
    assert_nothing_made(mailoutbox)


@pytest.mark.parametrize("body", REJECTED_BODIES)
def test_resend_api_rejects_hostile_bodies_with_a_4xx(client, body, mailoutbox):
    response = post_json(client, "/api/activation/resend", body)

    assert 400 <= response.status_code < 500
    assert "errors" in response.json()
    assert_nothing_made(mailoutbox)


def test_a_huge_json_body_is_refused_with_413(client):
    response = post_json(client, "/api/register", "x" * 3_000_000)

    assert response.status_code == 413
    assert_nothing_made()


def test_a_body_shorter_than_its_content_length_is_a_400(client):
    response = client.generic(
        "POST",
        "/api/register",
        b'{"email": "a@example.com"',
        content_type="application/json",
    )

    assert response.status_code == 400
    assert_nothing_made()


def test_sql_looking_but_valid_address_is_stored_literally(client):
    email = "o'reilly+x--@example.com"

    response = post_json(
        client, "/api/register", {"email": email, "password": PASSWORD}
    )

    assert response.status_code == 202
    assert User.objects.get().email == email
    assert "users_user" in connection.introspection.table_names()


def test_duplicate_keys_use_the_last_value_and_make_one_account(client):
    body = '{"email": "a@example.com", "email": "b@example.com", "password": "%s"}'

    response = post_json(client, "/api/register", body % PASSWORD)

    assert response.status_code == 202
    assert list(User.objects.values_list("email", flat=True)) == ["b@example.com"]


def test_one_address_in_many_letter_cases_makes_one_account(client):
    variants = [
        "ada@example.com",
        "ADA@EXAMPLE.COM",
        "Ada@Example.Com",
        "aDa@example.com",
    ]

    answers = [
        post_json(client, "/api/register", {"email": e, "password": PASSWORD})
        for e in variants
    ]

    assert {(a.status_code, a.content) for a in answers} == {
        (answers[0].status_code, answers[0].content)
    }
    assert User.objects.count() == 1
    assert Delivery.objects.filter(kind="welcome").count() == 1


FORM_CASES = [
    pytest.param({"email": f"a@example.com\r\nBcc: {INJECTED}", "password": PASSWORD}),
    pytest.param({"email": "<script>alert(1)</script>", "password": PASSWORD}),
    pytest.param({"email": "a\x00@example.com", "password": PASSWORD}, id="nul-email"),
    pytest.param({"email": "x" * 5000 + "@example.com", "password": PASSWORD}),
    pytest.param({"email": [INJECTED, "a@example.com, " + INJECTED]}, id="repeated"),
    pytest.param({"password": PASSWORD}, id="missing-email"),
    pytest.param({}, id="empty"),
]


@pytest.mark.parametrize("data", FORM_CASES)
@pytest.mark.parametrize("url", ["/register/", "/activate/resend/"])
def test_forms_answer_hostile_input_with_400_and_escape_it(client, url, data):
    response = client.post(url, data)

    assert response.status_code == 400
    assert b"<script>alert" not in response.content
    assert_nothing_made()


@pytest.mark.parametrize(
    "password", ["nul\x00byte password", "x" * 5000, "", "short"], ids=repr
)
def test_the_registration_form_refuses_bad_passwords(client, password):
    response = client.post(
        "/register/", {"email": "a@example.com", "password": password}
    )

    assert response.status_code == 400
    assert_nothing_made()


@pytest.mark.parametrize("url", ["/register/", "/activate/resend/"])
def test_a_form_body_over_the_upload_limit_is_a_400_not_a_500(client, url, settings):
    body = "email=a%40example.com&password=" + "x" * (
        settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1
    )

    response = client.post(url, body, content_type="application/x-www-form-urlencoded")

    assert response.status_code == 400
    assert_nothing_made()


@pytest.mark.parametrize("url", ["/register/", "/activate/resend/"])
def test_a_form_with_thousands_of_fields_is_a_400_not_a_500(client, url):
    body = "&".join(f"f{n}=1" for n in range(1200))

    response = client.post(url, body, content_type="application/x-www-form-urlencoded")

    assert response.status_code == 400
    assert_nothing_made()


def test_an_idn_address_registers_in_the_form_too(client):
    response = client.post(
        "/register/", {"email": "juergen@bücher.example", "password": PASSWORD}
    )

    assert response.status_code == 302
    assert User.objects.get().email == "juergen@bücher.example"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
FIELD_VALUES = st.one_of(
    JSON_VALUES,
    st.emails(),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=300),
    st.sampled_from(
        [
            f"a@example.com\r\nBcc: {INJECTED}",
            "ADA@example.com",
            "ada@EXAMPLE.com",
            "<script>@example.com",
            "' OR 1=1 --",
            "jürgen@bücher.example",
            PASSWORD,
            "x" * 129,
        ]
    ),
)
PLAUSIBLE = st.fixed_dictionaries(
    {
        "email": st.emails()
        | st.sampled_from(["ada@example.com", "ADA@Example.com", "a@bücher.example"]),
        "password": st.just(PASSWORD) | st.text(min_size=12, max_size=40),
    }
)
BODIES = st.one_of(
    JSON_VALUES,
    PLAUSIBLE,
    st.fixed_dictionaries(
        {},
        optional={
            "email": FIELD_VALUES,
            "password": FIELD_VALUES,
            "extra": JSON_VALUES,
        },
    ),
)


@hypothesis_settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=BODIES)
def test_any_json_body_gets_202_or_a_4xx_and_202_means_one_account(client, body):
    before = User.objects.count()

    response = post_json(client, "/api/register", body)

    event(f"status {response.status_code}")
    assert response.status_code in (202, 400, 413)
    payload = response.json()
    if response.status_code == 202:
        email = body["email"]
        user = User.objects.get(email__iexact=email.strip())
        assert not user.is_active
        assert Delivery.objects.filter(user=user, kind="welcome").count() == 1
        assert set(Delivery.objects.values_list("kind", flat=True)) <= {
            "welcome",
            "account_exists",
        }
    else:
        assert set(payload) == {"errors"}
        assert User.objects.count() == before
    assert not Delivery.objects.filter(user__email__icontains=INJECTED).exists()
