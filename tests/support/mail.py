"""Point the default mailer at the project's SMTP backend, on Django 5.2 or 6.1."""

import os
from importlib import import_module

from mailer.mailers import EMAIL_SETTINGS, USES_MAILERS, mailer_options

SMTP_BACKEND = "mailer.smtp.EmailBackend"


def configured_smtp_options() -> dict[str, object]:
    """Return the SMTP options project/settings.py built from the environment.

    The test runner swaps 6.1's whole MAILERS for locmem (options gone), so
    they are read from the settings module itself there.
    """
    if USES_MAILERS:
        module = import_module(os.environ["DJANGO_SETTINGS_MODULE"])
        return dict(module.MAILERS["default"]["OPTIONS"])
    return mailer_options()


def use_smtp(django_settings, **options: object) -> None:
    """Send through the project's SMTP backend with some of its options changed.

    `django_settings` is pytest-django's `settings` fixture, which restores
    every change after the test.
    """
    if USES_MAILERS:
        django_settings.MAILERS = {
            "default": {
                "BACKEND": SMTP_BACKEND,
                "OPTIONS": configured_smtp_options() | options,
            }
        }
        return
    django_settings.EMAIL_BACKEND = SMTP_BACKEND
    for option, value in options.items():
        setattr(django_settings, EMAIL_SETTINGS[option], value)


def use_backend(django_settings, path: str) -> None:
    """Send through the backend at `path` (options kept only for SMTP)."""
    if USES_MAILERS:
        options = configured_smtp_options() if path == SMTP_BACKEND else {}
        django_settings.MAILERS = {"default": {"BACKEND": path, "OPTIONS": options}}
        return
    django_settings.EMAIL_BACKEND = path
