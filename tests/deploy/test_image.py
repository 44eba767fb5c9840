"""The Dockerfile: slim Python, pinned dependencies, non-root, and a build that works.

No Docker engine runs here, so the build step that runs project code
(collectstatic) is run on a copy of the build context (.dockerignore
applied) with only the environment the Dockerfile gives it.
"""

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions(name: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [
        line.split(None, 1)[1]
        for line in joined.splitlines()
        if line.upper().startswith(name + " ")
    ]


def test_image_is_slim_python_311_from_the_pinned_list_running_as_non_root():
    [base] = instructions("FROM")
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base)
    assert any(
        "pip install" in r and "-r requirements.txt" in r for r in instructions("RUN")
    )
    assert "requirements-dev" not in DOCKERFILE
    [user] = instructions("USER")
    assert user not in {"root", "0"}


def dockerignored() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line for line in lines if line and not line.startswith(("#", "!"))]


def ignored(relative: str, patterns: list[str]) -> bool:
    parts = relative.split("/")
    return any(
        fnmatch.fnmatch(relative, p.removeprefix("**/"))
        or fnmatch.fnmatch(parts[-1], p.removeprefix("**/"))
        or relative.startswith(p.rstrip("/") + "/")
        for p in patterns
    )


def test_build_context_leaves_out_local_state_and_secrets():
    patterns = dockerignored()
    local = (".venv/bin/python", ".venv-django61/bin/python", "var/db.sqlite3")
    for path in (*local, ".env", ".git/HEAD"):
        assert ignored(path, patterns), path
    for path in ("manage.py", "requirements.txt", "mailer/tasks.py", "flowerconfig.py"):
        assert not ignored(path, patterns), path


def test_the_collectstatic_build_step_succeeds_with_only_the_dockerfile_environment(
    tmp_path,
):
    context = tmp_path / "app"
    patterns = dockerignored()
    shutil.copytree(
        ROOT,
        context,
        ignore=lambda directory, names: {
            name
            for name in names
            if ignored(str(Path(directory, name).relative_to(ROOT)), patterns)
        },
    )
    [step] = [r for r in instructions("RUN") if "collectstatic" in r]
    command = shlex.split(step.split("&&")[0])
    env = {"PATH": f"{Path(sys.executable).parent}:{os.defpath}"}
    while "=" in command[0]:
        name, value = command.pop(0).split("=", 1)
        env[name] = value

    result = subprocess.run(
        command, cwd=context, env=env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert list((context / "var" / "static").rglob("*.css"))
