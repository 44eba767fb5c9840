"""Readers for the deployment files: the Procfile and docker-compose.yml."""

import os
import re
import shlex
import shutil
import subprocess

import pytest
import yaml

from tests.support import ROOT

# Services that are not this project's image.
MONITORING = {"prometheus", "blackbox", "grafana"}
INFRASTRUCTURE = {"redis", "postgres", "mailpit"} | MONITORING


def procfile() -> dict[str, list[str]]:
    """Each Procfile process with its command split as a shell would."""
    processes = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            processes[name.strip()] = shlex.split(command)
    return processes


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def compose_command(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def env_example_names() -> set[str]:
    """Variables .env.example sets or shows commented with their default."""
    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"^#?\s?([A-Z][A-Z0-9_]*)=", text, flags=re.M))


def compose_validator() -> list[str] | None:
    """`docker compose` when the CLI plugin works, else Debian's docker-compose."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.fixture
def validator():
    command = compose_validator()
    if command is None:
        reason = "no compose validator (apt-get install docker-compose)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return command
