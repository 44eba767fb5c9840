"""The OpenAPI document says what the views do: every answer, its shape, its headers."""

import json

import jsonschema_rs
import pytest
from django.db import OperationalError, connection
from django.test import Client
from django.urls import resolve

from project import openapi
from tests.support.mail import configured_smtp_options

pytestmark = pytest.mark.django_db

DOCUMENT = openapi.build_document()
METHODS = ["get", "post", "put", "patch", "delete", "head", "options"]
PASSWORD = "correct horse battery staple"


def resolved(ref_or_object: dict) -> dict:
    """Follow one local `$ref` of the document."""
    ref = ref_or_object.get("$ref")
    if ref is None:
        return ref_or_object
    node = DOCUMENT
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def documented(path: str, method: str, status: int) -> dict:
    operation = DOCUMENT["paths"][path][method]
    return resolved(operation["responses"][str(status)])


def assert_conforms(response, *, path: str, method: str) -> None:
    """The answer's status, headers and body are the ones documented."""
    assert str(response.status_code) in DOCUMENT["paths"][path][method]["responses"]
    spec = documented(path, method, response.status_code)
    for name, header in spec.get("headers", {}).items():
        if header.get("required"):
            assert name in response.headers, f"{name} missing"
            schema = header["schema"]
            if schema["type"] == "integer":
                assert int(response[name]) >= schema.get("minimum", 0)
    content = spec.get("content")
    if content is None:
        return
    assert response["Content-Type"].startswith("application/json")
    schema = dict(content["application/json"]["schema"])
    schema["components"] = DOCUMENT["components"]
    jsonschema_rs.validator_for(schema).validate(json.loads(response.content))


def post_json(client, path: str, body) -> object:
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return client.post(path, data, content_type="application/json")


def test_the_document_is_openapi_3_1_and_names_only_urls_of_the_site():
    assert DOCUMENT["openapi"].startswith("3.1.")
    for path in DOCUMENT["paths"]:
        resolve(path)  # every documented path is a URL of the site


def test_the_site_serves_the_document_and_docs_keep_a_current_copy(client):
    response = client.get("/api/openapi.json")

    assert response.status_code == 200
    assert response.json() == DOCUMENT
    assert json.loads(openapi.COPY.read_text()) == DOCUMENT, (
        "docs/openapi.json is stale: run write_copy() (see project/openapi.py)"
    )


def test_the_document_shows_no_setting_or_secret(client, settings):
    text = client.get("/api/openapi.json").content.decode()
    smtp = configured_smtp_options()

    for value in (
        settings.SECRET_KEY,
        settings.CELERY_BROKER_URL,
        smtp["password"] or "\0",
        settings.METRICS_BASIC_AUTH or "\0",
        settings.DATABASES["default"]["NAME"],
        settings.SITE_URL,
        str(smtp["port"]),
    ):
        assert str(value) not in text
    assert "servers" not in DOCUMENT


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/api/register", {"post"}),
        ("/api/activation/resend", {"post"}),
        ("/healthz", {"get", "head"}),
    ],
)
def test_every_method_the_views_refuse_answers_the_documented_405(
    client, redis_server, path, allowed
):
    strict = Client(enforce_csrf_checks=True)  # as a real client meets it
    for method in METHODS:
        response = getattr(strict, method)(path)
        if method in allowed:
            assert response.status_code != 405, method
        else:
            assert response.status_code == 405, method
            [documented_method] = set(DOCUMENT["paths"][path]) & allowed
            assert_conforms(response, path=path, method=documented_method)
    assert set(DOCUMENT["paths"][path]) <= allowed


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/api/register", {"email": "new@example.com", "password": PASSWORD}, 202),
        ("/api/register", {"email": "nope", "password": PASSWORD}, 400),
        ("/api/register", {"email": "a@example.com", "password": "123"}, 400),
        ("/api/register", {"email": 7, "password": PASSWORD}, 400),
        ("/api/register", b"{not json", 400),
        ("/api/register", b"[1, 2]", 400),
        ("/api/register", b"x" * (17 * 1024), 413),
        ("/api/activation/resend", {"email": "someone@example.com"}, 202),
        ("/api/activation/resend", {}, 400),
        ("/api/activation/resend", b"\xff\xfe", 400),
        ("/api/activation/resend", b"x" * (17 * 1024), 413),
    ],
)
def test_every_json_answer_has_its_documented_shape(
    client, redis_server, path, body, status
):
    response = post_json(client, path, body)

    assert response.status_code == status
    assert_conforms(response, path=path, method="post")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/register", {"email": "busy@example.com", "password": PASSWORD}),
        ("/api/activation/resend", {"email": "busy@example.com"}),
    ],
)
def test_a_rate_limited_request_gets_the_documented_429_and_retry_after(
    client, redis_server, settings, path, body
):
    settings.RATELIMIT_REGISTER_IP = settings.RATELIMIT_RESEND_IP = "1/h"
    post_json(client, path, body)

    response = post_json(client, path, body)

    assert response.status_code == 429
    assert_conforms(response, path=path, method="post")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/register", {"email": "ada@example.com", "password": PASSWORD}),
        ("/api/activation/resend", {"email": "ada@example.com"}),
    ],
)
def test_a_request_that_loses_the_database_gets_the_documented_503(
    client, redis_server, path, body
):
    def connection_lost(execute, sql, params, many, context):
        raise OperationalError("server closed the connection unexpectedly")

    with connection.execute_wrapper(connection_lost):
        response = post_json(client, path, body)

    assert response.status_code == 503
    assert_conforms(response, path=path, method="post")


@pytest.mark.django_db(transaction=True)
def test_health_answers_200_and_503_as_documented(client, redis_server, settings):
    healthy = client.get("/healthz")
    assert healthy.status_code == 200
    assert_conforms(healthy, path="/healthz", method="get")

    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    down = client.get("/healthz")

    assert down.status_code == 503
    assert_conforms(down, path="/healthz", method="get")


def test_documented_statuses_are_the_ones_the_tests_above_produce():
    statuses = {
        (path, method): set(operation["responses"])
        for path, item in DOCUMENT["paths"].items()
        for method, operation in item.items()
    }

    assert statuses == {
        ("/api/register", "post"): {"202", "400", "405", "413", "429", "503"},
        ("/api/activation/resend", "post"): {"202", "400", "405", "413", "429", "503"},
        ("/healthz", "get"): {"200", "405", "503"},
    }
