"""The default mailer on either supported Django: 6.1's MAILERS, or 5.2's EMAIL_*.

Django 6.1 configures mail through `MAILERS` and deprecates the `EMAIL_*`
settings, `get_connection()` and `fail_silently`; Django 5.2 has only those.
This module and project/settings.py are the only places that tell them apart.
"""

import django
from django.conf import settings
from django.core.mail.backends.base import BaseEmailBackend

USES_MAILERS = django.VERSION >= (6, 1)
DEFAULT_ALIAS = "default"

# 5.2's setting for each of 6.1's SMTP OPTIONS.
EMAIL_SETTINGS = {
    "host": "EMAIL_HOST",
    "port": "EMAIL_PORT",
    "username": "EMAIL_HOST_USER",
    "password": "EMAIL_HOST_PASSWORD",
    "use_tls": "EMAIL_USE_TLS",
    "use_ssl": "EMAIL_USE_SSL",
    "timeout": "EMAIL_TIMEOUT",
}


def get_mailer() -> BaseEmailBackend:
    """Return a new, unopened instance of the default mailer's backend."""
    if USES_MAILERS:
        from django.core.mail import mailers

        return mailers[DEFAULT_ALIAS]
    from django.core.mail import get_connection

    return get_connection(fail_silently=False)


def backend_path() -> str:
    """Return the dotted path of the default mailer's backend class."""
    if USES_MAILERS:
        return settings.MAILERS[DEFAULT_ALIAS]["BACKEND"]
    return settings.EMAIL_BACKEND


def mailer_options() -> dict[str, object]:
    """Return the default mailer's SMTP options (host, port, timeout, ...)."""
    if USES_MAILERS:
        return dict(settings.MAILERS.get(DEFAULT_ALIAS, {}).get("OPTIONS", {}))
    return {option: getattr(settings, name) for option, name in EMAIL_SETTINGS.items()}
