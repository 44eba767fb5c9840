"""docker-compose.yml: valid, healthy, ordered, and configured like the docs say."""

import os
import re
import subprocess

import pytest
import redis
from django.conf import settings

from tests.deploy.conftest import (
    INFRASTRUCTURE,
    compose,
    compose_command,
    env_example_names,
)
from tests.support import ROOT, free_port, stop_process, wait_until

SERVICES = {"migrate", "web", "worker", "beat", "flower"} | INFRASTRUCTURE
# Compose builds these from its own redis and postgres services.
SET_BY_COMPOSE = {"DATABASE_URL", "REDIS_URL", "REDIS_SENTINEL_MASTER"}


def app_services() -> dict[str, dict]:
    return {
        name: service
        for name, service in compose()["services"].items()
        if name not in INFRASTRUCTURE
    }


def test_compose_file_validates_with_the_example_environment(validator):
    result = subprocess.run(
        [*validator, "--env-file", ".env.example", "-f", "docker-compose.yml"]
        + ["config", "--quiet"],
        cwd=ROOT,
        env={**os.environ, "APP_ENV_FILE": ".env.example"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_start_without_the_secrets(validator, tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = subprocess.run(
        [*validator, "--env-file", str(empty), "-f", "docker-compose.yml"]
        + ["config", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "in .env" in result.stderr


def test_the_stack_has_every_service_from_one_image():
    services = compose()["services"]
    assert set(services) == SERVICES
    images = {service["image"] for service in app_services().values()}
    assert images == {"${APP_IMAGE:-welcome-mail:latest}"}
    assert all(s["build"] == "." for s in app_services().values())


def test_every_long_running_service_has_a_health_check():
    for name, service in compose()["services"].items():
        if service.get("restart") == "no":  # the one-shot migrate
            continue
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in {"CMD", "CMD-SHELL"}, name


def test_health_check_snippets_are_valid_python():
    for name, service in compose()["services"].items():
        test = service.get("healthcheck", {}).get("test", [])
        if test[1:3] == ["python", "-c"]:
            compile(test[3], f"{name} healthcheck", "exec")


def test_app_services_wait_for_migrations_redis_and_postgres():
    for name, service in app_services().items():
        conditions = {
            dependency: options["condition"]
            for dependency, options in service["depends_on"].items()
        }
        assert conditions["postgres"] == "service_healthy", name
        if name != "migrate":
            assert conditions["migrate"] == "service_completed_successfully"
            assert conditions["redis"] == "service_healthy", name


def test_flower_waits_for_a_worker_that_answers_a_ping():
    services = compose()["services"]
    assert services["flower"]["depends_on"]["worker"] == {
        "condition": "service_healthy"
    }
    ping = services["worker"]["healthcheck"]["test"][1]
    assert "celery -A celery_app inspect ping" in ping
    assert "--destination celery@$$HOSTNAME" in ping


def test_flower_requires_a_login_and_listens_on_every_container_interface():
    environment = compose()["services"]["flower"]["environment"]
    assert environment["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert environment["FLOWER_ADDRESS"] == "0.0.0.0"


def test_worker_can_scale_and_beat_runs_once_with_a_kept_schedule():
    services = compose()["services"]
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker
    command = compose_command(worker)
    # One node per replica, as the health check's ping expects.
    assert command[command.index("--hostname") + 1] == "celery@%h"
    assert worker["deploy"]["replicas"] == "${WORKER_PROCESSES:-2}"
    beat = services["beat"]
    schedule = compose_command(beat)[compose_command(beat).index("--schedule") + 1]
    [volume] = beat["volumes"]
    assert schedule.startswith(volume.split(":")[1] + "/")


def test_worker_gets_longer_than_a_send_to_finish_on_stop():
    grace = compose()["services"]["worker"]["stop_grace_period"]
    seconds = int(re.fullmatch(r"\$\{WORKER_STOP_GRACE:-(\d+)s\}", grace).group(1))
    limit = settings.MAILER_SEND_TIME_LIMIT  # the app's default, as in .env.example
    assert seconds > limit


def test_compose_redis_needs_the_password_persists_and_never_evicts(tmp_path):
    """Run the compose service's redis-server command here and ask it."""
    command = compose_command(compose()["services"]["redis"])
    command[command.index("--requirepass") + 1] = "s3cret"
    command[command.index("--maxmemory") + 1] = "64mb"
    port = free_port()
    process = subprocess.Popen(
        [*command, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(
            port=port, password="s3cret", socket_timeout=2, decode_responses=True
        )
        wait_until(lambda: _answers(client), timeout=10, what="compose redis")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, socket_timeout=2).ping()
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {
            "maxmemory-policy": "noeviction"
        }
    finally:
        stop_process(process)


def _answers(client: redis.Redis) -> bool:
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


def test_app_services_reach_redis_and_postgres_with_their_passwords():
    environment = compose()["x-app"]["environment"]
    assert environment["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?")
    assert environment["REDIS_URL"].endswith("@redis:6379/0")
    assert "${POSTGRES_PASSWORD:?" in environment["DATABASE_URL"]
    assert environment["DATABASE_URL"].endswith("@postgres:5432/welcome")


def test_env_example_lists_every_variable_compose_interpolates():
    text = (ROOT / "docker-compose.yml").read_text()
    interpolated = set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)", text))
    missing = interpolated - env_example_names()
    assert not missing, f"add to .env.example: {sorted(missing)}"


def test_env_example_lists_every_variable_the_app_reads():
    read = set()
    for path in ("project/settings.py", "flowerconfig.py"):
        source = (ROOT / path).read_text()
        read |= set(re.findall(r"env\.\w+\(\s*\"([A-Z][A-Z0-9_]*)\"", source))
        read |= set(re.findall(r"environ\.get\(\s*\"([A-Z][A-Z0-9_]*)\"", source))
    assert {"DJANGO_SECRET_KEY", "REDIS_URL", "FLOWER_BASIC_AUTH"} <= read
    missing = read - env_example_names()
    assert not missing, f"add to .env.example: {sorted(missing)}"


def test_every_variable_the_app_reads_reaches_the_app_containers():
    source = (ROOT / "project/settings.py").read_text()
    read = set(re.findall(r"env\.\w+\(\s*\"([A-Z][A-Z0-9_]*)\"", source))
    app = compose()["x-app"]
    assert app["env_file"] == "${APP_ENV_FILE:-.env}"  # .env, a copy of the example
    passed = env_example_names() | set(app["environment"])
    missing = read - passed - SET_BY_COMPOSE
    assert not missing, f"list in .env.example: {sorted(missing)}"


def test_compose_sets_only_what_differs_in_containers():
    environment = compose()["x-app"]["environment"]
    defaults = re.compile(r"^\$\{[A-Z0-9_]+:-.*\}$")
    copies = [name for name, value in environment.items() if defaults.match(value)]
    assert len(environment) <= 8, sorted(environment)
    assert set(copies) <= {"DJANGO_ALLOWED_HOSTS", "SITE_URL", "EMAIL_HOST"}
