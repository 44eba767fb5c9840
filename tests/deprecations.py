"""On the Django 6.1 leg, deprecations from Django and the project are errors.

Loaded with `-p tests.deprecations` (see pyproject.toml). The filters live in
pyproject.toml as `filterwarnings_django61`: they name categories that only
Django 6.1 defines, so they join `filterwarnings` only when it runs.
"""

import django

OPTION = "filterwarnings_django61"


def pytest_addoption(parser) -> None:
    parser.addini(
        OPTION,
        type="linelist",
        help="filterwarnings added when the suite runs on Django 6.1",
    )


def pytest_configure(config) -> None:
    if django.VERSION >= (6, 1):
        for line in config.getini(OPTION):
            config.addinivalue_line("filterwarnings", line)
