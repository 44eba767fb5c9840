"""The Makefile, the Procfile and docker-compose.yml start each process alike.

The Procfile is the source of truth (`make run` starts it with honcho);
compose runs the same commands, differing only in where a process listens
and where beat keeps its schedule. Every command names a real program,
subcommand and options, checked against the installed CLIs without running.
"""

import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
from celery.bin.celery import celery as celery_cli
from django.core.management import get_commands, load_command_class
from gunicorn.config import Config

from tests.deploy.conftest import INFRASTRUCTURE, compose, compose_command, procfile
from tests.support import ROOT

APP_PROCESSES = ["web", "worker", "beat", "flower"]
# Option values that depend on where a process runs, not on what it is.
SITE_SPECIFIC = {"--bind", "--schedule", "--hostname"}
BIN = Path(sys.executable).parent


def normalised(command: list[str]) -> list[str]:
    tokens = list(command)
    for index, token in enumerate(tokens[:-1]):
        if token in SITE_SPECIFIC:
            tokens[index + 1] = "<site-specific>"
    return tokens


@pytest.mark.parametrize("process", APP_PROCESSES)
def test_compose_runs_the_procfile_command(process):
    service = compose()["services"][process]
    assert normalised(compose_command(service)) == normalised(procfile()[process])


def test_make_run_starts_the_procfile_processes():
    makefile = (ROOT / "Makefile").read_text()
    run_recipe = re.search(r"^run:.*\n((?:\t.*\n)+)", makefile, flags=re.M).group(1)
    assert "./bin/run-stack" in run_recipe
    script = (ROOT / "bin/run-stack").read_text()
    assert 'honcho start --concurrency "worker=${WORKER_PROCESSES:-2}"' in script
    started = set(re.search(r'processes="([^"]+)"', script).group(1).split())
    started |= set(re.findall(r'processes="(\w+) \$processes"', script))
    assert set(APP_PROCESSES) <= started <= set(procfile())


def test_make_run_and_compose_start_as_many_workers_per_machine():
    script = (ROOT / "bin/run-stack").read_text()
    local = re.search(r"worker=\$\{WORKER_PROCESSES:-(\d+)\}", script).group(1)
    replicas = compose()["services"]["worker"]["deploy"]["replicas"]
    assert replicas == f"${{WORKER_PROCESSES:-{local}}}"
    # Each node has its own name: honcho's worker.1, worker.2; a container's own.
    procfile_worker = procfile()["worker"]
    name = procfile_worker[procfile_worker.index("--hostname") + 1]
    assert name == "${HONCHO_PROCESS_NAME:-celery}@%h"


def test_local_and_compose_redis_persist_and_never_evict():
    for command in (
        procfile()["redis"],
        compose_command(compose()["services"]["redis"]),
    ):
        options = dict(zip(command[1::2], command[2::2], strict=False))
        assert options["--appendonly"] == "yes"
        assert options["--maxmemory-policy"] == "noeviction"


def commands() -> list[tuple[str, list[str]]]:
    """Every app command: Procfile, compose services and their health checks."""
    found = [(f"Procfile {name}", argv) for name, argv in procfile().items()]
    for name, service in compose()["services"].items():
        if name in INFRASTRUCTURE:
            continue
        found.append((f"compose {name}", compose_command(service)))
        test = service.get("healthcheck", {}).get("test", [])
        if test and test[0] == "CMD-SHELL":
            found.append((f"compose {name} healthcheck", shlex.split(test[1])))
    return found


def options_of(argv: list[str]) -> list[str]:
    return [t.split("=")[0] for t in argv if t.startswith("-") and t != "-"]


def flags_of(command) -> set[str]:
    return {flag for param in command.params for flag in param.opts}


@pytest.mark.parametrize(
    ("where", "argv"), commands(), ids=[where for where, _ in commands()]
)
def test_every_command_names_a_real_program_subcommand_and_options(where, argv):
    program, *args = argv
    if program == "redis-server":
        assert shutil.which("redis-server"), "redis-server is not installed"
        return
    if program == "python":
        assert args[0] == "manage.py", where
        name, *options = args[1:]
        assert name in get_commands(), f"{where}: no manage.py {name}"
        parser = load_command_class(get_commands()[name], name).create_parser(
            "manage.py", name
        )
        known = {flag for action in parser._actions for flag in action.option_strings}
        assert set(options_of(options)) <= known, where
        return
    assert (BIN / program).is_file(), f"{where}: {program} is not installed"
    if program == "gunicorn":
        known = {flag for s in Config().settings.values() for flag in s.cli or []}
        assert set(options_of(args)) <= known, where
        assert args[0] == "project.wsgi"
        return
    assert program == "celery", where
    assert args[:2] == ["-A", "celery_app"], where
    subcommand = celery_cli.commands[args[2]]
    assert set(options_of(args[3:])) <= flags_of(subcommand), where
    if "--pool" in args:
        from celery.concurrency import get_available_pool_names

        assert args[args.index("--pool") + 1] in get_available_pool_names()


def test_workers_start_without_waiting_a_second_for_their_neighbours():
    # Mingle waits a second at start for other workers' revoked tasks, which
    # the service never uses; gossip subscribes to every worker's events.
    for argv in (
        procfile()["worker"],
        compose_command(compose()["services"]["worker"]),
    ):
        assert "--without-mingle" in argv
        assert "--without-gossip" in argv
