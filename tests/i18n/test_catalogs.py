"""Every string a registrant reads is translated, and the committed .mo match the .po.

The check runs Django's makemessages over a copy of the sources, as a
translator would (docs/api.md, "Languages"), so a string marked in a template
or in Python but missing from locale/ fails here. It needs GNU gettext
(xgettext, msgmerge, msgfmt: `apt-get install gettext`); an install does not,
because the compiled .mo files are committed.
"""

import ast
import gettext
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from tests.support import ROOT

# Where no string a registrant reads lives; makemessages skips them (-i).
NOT_SCANNED = ["tests", "bench", "deploy", "docs", "var", "test-artifacts"]
TOOLS = ("xgettext", "msgmerge", "msgfmt")


def shipped_languages() -> list[str]:
    """Every language of LANGUAGES but the source one, English."""
    return [code for code, _name in settings.LANGUAGES if code != "en"]


@pytest.fixture(scope="module")
def gettext_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        reason = f"{', '.join(missing)} not found (apt-get install gettext)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def make_messages(source: Path, into: Path) -> Path:
    """Copy the project at `source` to `into` and run makemessages there."""
    skipped = {".git", ".venv", *NOT_SCANNED}
    shutil.copytree(
        source,
        into,
        ignore=lambda folder, names: [
            name
            for name in names
            if name == "__pycache__" or (Path(folder) == source and name in skipped)
        ],
    )
    languages = [arg for code in shipped_languages() for arg in ("-l", code)]
    ignored = [arg for name in NOT_SCANNED for arg in ("-i", name)]
    subprocess.run(
        [sys.executable, "manage.py", "makemessages", *languages, *ignored]
        + ["--no-obsolete", "--verbosity", "0"],
        cwd=into,
        env={**os.environ, "DJANGO_DEBUG": "1", "PYTHONPATH": ""},
        check=True,
        capture_output=True,
        timeout=120,
    )
    return into / "locale"


def entries(po: Path) -> list[dict]:
    """Parse a .po file: msgid, msgid_plural, msgstr forms and flags per entry."""
    parsed = []
    for block in po.read_text(encoding="utf-8").split("\n\n"):
        entry = {"flags": set(), "msgstr": {}}
        key = None
        for line in block.splitlines():
            if line.startswith("#,"):
                entry["flags"] |= {flag.strip() for flag in line[2:].split(",")}
            elif line.startswith("#"):
                continue
            elif match := re.match(
                r"(msgid|msgid_plural|msgstr(?:\[(\d+)\])?) (.*)", line
            ):
                key = match[1] if match[2] is None else int(match[2])
                value = ast.literal_eval(match[3])
                if key in ("msgid", "msgid_plural"):
                    entry[key] = value
                else:
                    entry["msgstr"][0 if key == "msgstr" else key] = value
            elif line.startswith('"') and key is not None:
                value = ast.literal_eval(line)
                if key in ("msgid", "msgid_plural"):
                    entry[key] += value
                else:
                    entry["msgstr"][0 if key == "msgstr" else key] += value
        if "msgid" in entry:
            parsed.append(entry)
    return parsed


def untranslated(po: Path) -> list[str]:
    """The msgids of `po` with an empty or fuzzy translation, in any plural form."""
    nplurals = int(re.search(r"nplurals=(\d+)", po.read_text(encoding="utf-8"))[1])
    missing = []
    for entry in entries(po):
        if entry["msgid"] == "":
            continue  # the header
        forms = nplurals if "msgid_plural" in entry else 1
        strings = [entry["msgstr"].get(n, "") for n in range(forms)]
        if "fuzzy" in entry["flags"] or not all(strings):
            missing.append(entry["msgid"])
    return missing


def catalog(mo: Path) -> dict:
    with mo.open("rb") as file:
        return dict(gettext.GNUTranslations(file)._catalog)


@pytest.fixture(scope="module")
def fresh_catalogs(gettext_tools, tmp_path_factory) -> Path:
    """locale/ as makemessages leaves it after a run over today's sources."""
    return make_messages(ROOT, tmp_path_factory.mktemp("messages") / "project")


@pytest.mark.parametrize("language", shipped_languages())
def test_every_marked_string_has_a_translation(fresh_catalogs, language):
    po = fresh_catalogs / language / "LC_MESSAGES" / "django.po"

    assert [entry["msgid"] for entry in entries(po)][1:], "makemessages found nothing"
    assert untranslated(po) == [], (
        f"untranslated in {language}: run makemessages (docs/api.md, 'Languages') "
        "and translate them"
    )


@pytest.mark.parametrize("language", shipped_languages())
def test_the_committed_catalog_is_well_formed(gettext_tools, language):
    po = ROOT / "locale" / language / "LC_MESSAGES" / "django.po"

    # --check: the placeholders of each translation match its msgid, and the
    # plural forms match the header's Plural-Forms.
    result = subprocess.run(
        ["msgfmt", "--check", "--output-file=/dev/null", str(po)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert untranslated(po) == []


@pytest.mark.parametrize("language", shipped_languages())
def test_the_committed_mo_is_compiled_from_the_committed_po(
    gettext_tools, tmp_path, language
):
    folder = ROOT / "locale" / language / "LC_MESSAGES"
    compiled = tmp_path / "django.mo"

    subprocess.run(
        ["msgfmt", f"--output-file={compiled}", str(folder / "django.po")], check=True
    )

    assert catalog(folder / "django.mo") == catalog(compiled), (
        f"locale/{language}/LC_MESSAGES/django.mo is stale: run compilemessages"
    )


@pytest.mark.parametrize(
    ("path", "marked"),
    [
        (
            "users/templates/users/register_done.html",
            '{% translate "A sentence nobody translated" %}\n',
        ),
        ("users/api.py", '\nNEW = _("A sentence nobody translated")\n'),
    ],
)
def test_the_check_fails_for_a_string_without_a_translation(
    gettext_tools, tmp_path, path, marked
):
    project = tmp_path / "project"
    make_messages(ROOT, project)
    source = project / path
    source.write_text(source.read_text() + marked)
    shutil.rmtree(project / "locale")
    shutil.copytree(ROOT / "locale", project / "locale")

    fresh = make_messages(project, tmp_path / "again")

    for language in shipped_languages():
        po = fresh / language / "LC_MESSAGES" / "django.po"
        assert untranslated(po) == ["A sentence nobody translated"]
