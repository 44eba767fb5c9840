"""Reading a JSON request body into a form: size, syntax, shape and types."""

import json

from django import forms
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.utils.translation import gettext as _


def read_json_form(request: HttpRequest, form_class):
    """Return (bound valid form, None) or (None, a 4xx JSON answer)."""
    data, problem = read_json_object(request, fields=form_class.base_fields)
    if problem:
        return None, problem
    form = form_class({field: data.get(field) for field in form_class.base_fields})
    if not form.is_valid():
        errors = {field: list(messages) for field, messages in form.errors.items()}
        return None, JsonResponse({"errors": errors}, status=400)
    return form, None


def read_json_object(
    request: HttpRequest, *, fields
) -> tuple[dict, JsonResponse | None]:
    """Read a JSON object for the form `fields`; or a 400 or 413 answer saying why.

    Text fields (CharField, EmailField) must be strings; others (the language)
    clean any value themselves. The body is read up to
    REGISTRATION_MAX_BODY_BYTES and no further.
    """
    limit = settings.REGISTRATION_MAX_BODY_BYTES
    try:
        declared = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        declared = 0
    body = request.read(limit + 1) if declared <= limit else b""
    if declared > limit or len(body) > limit:
        message = _("Request body is larger than %(limit)d bytes.") % {"limit": limit}
        error = json_error("__all__", message)
        return {}, JsonResponse(error, status=413)
    try:
        data = json.loads(body)
    # ValueError covers bad UTF-8 and integers past Python's digit limit;
    # RecursionError, arrays nested thousands deep.
    except (ValueError, RecursionError):
        return {}, JsonResponse(json_error("__all__", _("Malformed JSON.")), status=400)
    if not isinstance(data, dict):
        error = json_error("__all__", _("Expected a JSON object."))
        return {}, JsonResponse(error, status=400)
    for field in _text_fields(fields):
        value = data.get(field)
        if value is not None and not isinstance(value, str):
            error = json_error(field, _("Must be a string."))
            return {}, JsonResponse(error, status=400)
        if value is not None and not _is_encodable(value):
            # JSON may escape lone surrogates ("\ud800"), which no UTF-8 can hold.
            error = json_error(field, _("Must be valid Unicode."))
            return {}, JsonResponse(error, status=400)
    return data, None


def _text_fields(fields) -> list[str]:
    return [
        name for name, field in fields.items() if isinstance(field, forms.CharField)
    ]


def _is_encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_error(field: str, message: str) -> dict:
    """The `{"errors": {field: [message]}}` body every JSON 4xx answer has."""
    return {"errors": {field: [message]}}
