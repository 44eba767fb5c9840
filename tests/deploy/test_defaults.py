"""Each default is written once: project/settings.py holds it, .env.example shows it."""

import json
import os
import re
import subprocess
import sys

from tests.support import ROOT

COMMENTED = re.compile(r"^# ([A-Z][A-Z0-9_]*)=(.*)$")
TRUE = {"1", "true", "on", "yes"}


def documented_defaults() -> dict[str, str]:
    """The `# NAME=value` lines of .env.example: the defaults it shows."""
    lines = (ROOT / ".env.example").read_text().splitlines()
    return {m[1]: m[2] for line in lines if (m := COMMENTED.match(line))}


def settings_with_nothing_set(names: list[str]) -> dict:
    """The settings of the same names, in a process with none of them set."""
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(DJANGO_DEBUG="1", DJANGO_SETTINGS_MODULE="project.settings")
    # Django 6.1 holds the EMAIL_* variables in MAILERS, 5.2 in EMAIL_* settings.
    code = (
        "import json, sys; from django.conf import settings; "
        "from mailer.mailers import EMAIL_SETTINGS, mailer_options; "
        "names = json.loads(sys.argv[1]); "
        "mail = {n: mailer_options()[o] for o, n in EMAIL_SETTINGS.items()}; "
        "mail['EMAIL_BACKEND'] = settings.MAILERS['default']['BACKEND'] "
        "if hasattr(settings, 'MAILERS') else settings.EMAIL_BACKEND; "
        "values = {n: mail[n] if n in mail else getattr(settings, n, None) "
        "for n in names}; "
        "print(json.dumps({n: v for n, v in values.items() "
        "if isinstance(v, (str, int, float, bool))}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(names)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def same(documented: str, actual) -> bool:
    if isinstance(actual, bool):
        return (documented.lower() in TRUE) == actual
    if isinstance(actual, int | float):
        try:
            return float(documented) == actual
        except ValueError:
            return False
    return documented == actual


def test_env_example_shows_the_default_each_setting_has():
    documented = documented_defaults()
    actual = settings_with_nothing_set(sorted(documented))
    assert {"MAILER_LEASE", "MAILER_STALE_AFTER", "EMAIL_TIMEOUT"} <= set(actual)

    wrong = {
        name: (documented[name], value)
        for name, value in actual.items()
        if not same(documented[name], value)
    }

    assert not wrong, f".env.example (shown, actual default): {wrong}"
