"""The JSON API's contract: OpenAPI 3.1 at `GET /api/openapi.json`.

Written by hand next to the views it describes; tests/api holds it true to
them and fuzzes a live gunicorn with it (schemathesis). docs/openapi.json is
a copy for readers: `python manage.py shell -c "from project.openapi import
write_copy; write_copy()"` refreshes it, and a test fails when it is stale.
Nothing here comes from settings, so the document shows none.
"""

import json
from pathlib import Path

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe

COPY = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"


def _errors_response(description: str, *, headers: dict | None = None) -> dict:
    answer = {
        "description": description,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Errors"}}
        },
    }
    if headers:
        answer["headers"] = headers
    return answer


def _accepted(example: str) -> dict:
    return {
        "description": "Accepted; the mail, if one is owed, goes out of band.",
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/Accepted"},
                "example": {"status": "accepted", "detail": example},
            }
        },
    }


# The languages the site ships (settings.LANGUAGES); tests/users holds the two
# lists equal.
LANGUAGES = ["en", "de", "es"]

ACCEPT_LANGUAGE = {
    "name": "Accept-Language",
    "in": "header",
    "required": False,
    "description": (
        "The language of the answer's messages and, for a registration "
        "without `language`, of the account's mails. The `django_language` "
        "cookie, when set, comes first. Only the languages of the `language` "
        "field count; with none of them, English."
    ),
    "schema": {"type": "string"},
    "example": "de-DE,de;q=0.9,en;q=0.8",
}


def _json_post(*, summary: str, description: str, body: str, accepted: str) -> dict:
    """A POST operation of the JSON API, with every answer it can give."""
    return {
        "summary": summary,
        "description": description,
        "operationId": summary.lower().replace(" ", "_"),
        "parameters": [ACCEPT_LANGUAGE],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}
            },
        },
        "responses": {
            "202": _accepted(accepted),
            "400": _errors_response(
                "Malformed JSON, not an object, a field that is not a string, or "
                "a field the form refuses; `errors` names each field (`__all__` "
                "for the body as a whole)."
            ),
            "413": _errors_response("The body is larger than 16 KiB."),
            "429": {"$ref": "#/components/responses/TooManyRequests"},
            "405": NOT_ALLOWED,
            "503": {"$ref": "#/components/responses/DatabaseUnavailable"},
        },
    }


# Every path answers any method it does not document with 405 and `Allow`;
# OpenAPI has no place for "any other method", so each operation lists it.
NOT_ALLOWED = {"$ref": "#/components/responses/MethodNotAllowed"}


def build_document() -> dict:
    """The OpenAPI 3.1 document, the same for every request and every site."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Welcome-mail service",
            "version": "1.0.0",
            "description": (
                "Registration and activation-link requests answer at once: "
                "every mail goes out of band. The answers never tell whether "
                "an account exists. Rate limits per client IP and per address "
                "answer 429 with Retry-After."
            ),
        },
        "paths": {
            "/api/register": {
                "post": _json_post(
                    summary="Register",
                    description=(
                        "Create an account and queue its welcome mail. The same "
                        "202 for a new address and a taken one. The mail is in "
                        "`language`, else in the request's language "
                        "(`django_language` cookie, then `Accept-Language`); a "
                        "taken address gets its notice in the language stored "
                        "with its account."
                    ),
                    body="Registration",
                    accepted="Check your inbox for a link to activate your account.",
                ),
            },
            "/api/activation/resend": {
                "post": _json_post(
                    summary="Resend activation",
                    description=(
                        "Queue a new activation link for an account that awaits "
                        "activation; the same 202 for any address."
                    ),
                    body="ActivationResend",
                    accepted=(
                        "If an account with this address awaits activation, "
                        "a new activation link is on its way."
                    ),
                ),
            },
            "/healthz": {
                "get": {
                    "summary": "Health",
                    "operationId": "health",
                    "description": (
                        "Does this process reach its database and broker in "
                        "time? Never shows an error text or a URL."
                    ),
                    "responses": {
                        "200": _health("Every dependency answered."),
                        "503": _health("A dependency is unavailable or timed out."),
                        "405": NOT_ALLOWED,
                    },
                },
            },
        },
        "components": {
            "schemas": _schemas(),
            "responses": {
                "DatabaseUnavailable": {
                    "description": (
                        "The database dropped the request's connection (restarted, "
                        "failed over): nothing was created, unless it dropped during "
                        "the commit itself. The same request may be sent again "
                        "after Retry-After and gets the same answer either way."
                    ),
                    "headers": {
                        "Retry-After": {
                            "description": "Seconds to wait before sending it again.",
                            "required": True,
                            "schema": {"type": "integer", "minimum": 1},
                        }
                    },
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/Errors"}
                        }
                    },
                },
                "TooManyRequests": {
                    "description": "Over a rate limit (per client IP or per address).",
                    "headers": {
                        "Retry-After": {
                            "description": "Seconds until the limit's window ends.",
                            "required": True,
                            "schema": {"type": "integer", "minimum": 1},
                        }
                    },
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/Errors"}
                        }
                    },
                },
                "MethodNotAllowed": {
                    "description": (
                        "Sent for any method the path does not document; "
                        "`Allow` lists the ones it does."
                    ),
                    "headers": {
                        "Allow": {"required": True, "schema": {"type": "string"}}
                    },
                },
            },
        },
    }


def _health(description: str) -> dict:
    return {
        "description": description,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Health"}}
        },
    }


def _schemas() -> dict:
    state = {"type": "string", "enum": ["ok", "unavailable", "timeout"]}
    return {
        "Registration": {
            "type": "object",
            "required": ["email", "password"],
            "properties": {
                "email": {"type": "string", "format": "email", "maxLength": 254},
                "password": {"type": "string", "minLength": 8, "maxLength": 128},
                "language": {
                    "description": (
                        "Optional: the language of the account's mails, one of "
                        f"{', '.join(LANGUAGES)}; a regional tag counts as its "
                        "language (`de-DE` is `de`). Missing, null or empty: the "
                        "request's language. Any other value (an unknown code, a "
                        "number) falls back to English; it is never an error."
                    ),
                    "anyOf": [
                        {"type": "string", "enum": LANGUAGES},
                        {"description": "Anything else: English."},
                    ],
                    "examples": ["de"],
                },
            },
        },
        "ActivationResend": {
            "type": "object",
            "required": ["email"],
            "properties": {
                "email": {"type": "string", "format": "email", "maxLength": 254}
            },
        },
        "Accepted": {
            "type": "object",
            "required": ["status", "detail"],
            "properties": {
                "status": {"const": "accepted"},
                "detail": {"type": "string"},
            },
            "additionalProperties": False,
        },
        "Errors": {
            "type": "object",
            "required": ["errors"],
            "properties": {
                "errors": {
                    "type": "object",
                    "description": "Messages by field name; `__all__` for the body.",
                    "minProperties": 1,
                    "additionalProperties": {
                        "type": "array",
                        "items": {"type": "string"},
                        "minItems": 1,
                    },
                }
            },
            "additionalProperties": False,
        },
        "Health": {
            "type": "object",
            "required": ["database", "broker", "oldest_undelivered_seconds"],
            "properties": {
                "database": state,
                "broker": state,
                "oldest_undelivered_seconds": {
                    "type": ["number", "null"],
                    "minimum": 0,
                    "description": "Age of the oldest mail not yet delivered.",
                },
            },
            "additionalProperties": False,
        },
    }


@csrf_exempt  # read-only: answer other methods 405, not CSRF's 403
@require_safe
def openapi_document(request: HttpRequest) -> JsonResponse:
    """Serve the contract; public, like the API it describes."""
    return JsonResponse(build_document(), json_dumps_params={"indent": 2})


def write_copy(path: Path = COPY) -> None:
    """Write docs/openapi.json from the document the site serves."""
    path.write_text(json.dumps(build_document(), indent=2) + "\n")
