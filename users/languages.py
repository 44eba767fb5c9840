"""The registrant's language: one of settings.LANGUAGES, whatever was asked for."""

import re

from django.conf import settings
from django.http import HttpRequest
from django.utils import translation

# A language tag as BCP 47 spells it ("de", "de-DE", "zh-Hant-TW"); anything
# else ("../etc", 16 KiB of text) never reaches Django's cached lookup.
_TAG = re.compile(r"[A-Za-z]{1,8}(?:[-_][A-Za-z0-9]{1,8}){0,4}")


def language_choices() -> list[tuple[str, str]]:
    """Return settings.LANGUAGES: the choices of every language field."""
    return list(settings.LANGUAGES)


def default_language() -> str:
    """Return the LANGUAGES code of settings.LANGUAGE_CODE ("en-us" -> "en")."""
    try:
        return translation.get_supported_language_variant(settings.LANGUAGE_CODE)
    except LookupError:
        return settings.LANGUAGE_CODE


def supported_language(code: object) -> str:
    """Return the LANGUAGES code `code` names ("de-DE" -> "de"), else the default.

    Never raises: an unknown, malformed or non-string code falls back to
    `default_language()`.
    """
    if not isinstance(code, str) or not _TAG.fullmatch(code):
        return default_language()
    try:
        return translation.get_supported_language_variant(
            code.replace("_", "-").lower()
        )
    except LookupError:
        return default_language()


def request_language(request: HttpRequest) -> str:
    """Return the language of `request` as LocaleMiddleware finds it.

    The django_language cookie, then Accept-Language, restricted to LANGUAGES;
    else the default.
    """
    return supported_language(translation.get_language_from_request(request))
