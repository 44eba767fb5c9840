"""docker-compose.yml's monitoring profile runs the files in deploy/monitoring."""

import os
import subprocess

import yaml

from tests.deploy.conftest import MONITORING, compose, validator  # noqa: F401
from tests.monitoring.promtool import MONITORING as MONITORING_DIR
from tests.support import ROOT


def services() -> dict[str, dict]:
    return compose()["services"]


def test_monitoring_services_run_only_in_the_monitoring_profile():
    for name in MONITORING:
        assert services()[name]["profiles"] == ["monitoring"], name
    for name, service in services().items():
        if name not in MONITORING:
            assert "profiles" not in service, name


def test_the_profile_validates_with_the_example_environment(validator):  # noqa: F811
    result = subprocess.run(
        [*validator, "--env-file", ".env.example", "-f", "docker-compose.yml"]
        + ["--profile", "monitoring", "config"],
        cwd=ROOT,
        env={**os.environ, "APP_ENV_FILE": ".env.example"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert MONITORING <= set(resolved["services"])


def test_prometheus_and_grafana_mount_the_shipped_files():
    prometheus = services()["prometheus"]
    assert "./deploy/monitoring:/etc/prometheus:ro" in prometheus["volumes"]
    command = " ".join(prometheus["command"])
    assert "--config.file=/etc/prometheus/prometheus.yml" in command
    config = yaml.safe_load((MONITORING_DIR / "prometheus.yml").read_text())
    [web] = [
        job for job in config["scrape_configs"] if job["job_name"] == "welcome-web"
    ]
    assert web["basic_auth"]["password_file"] in command
    assert "alerts.yml" in config["rule_files"]
    grafana = services()["grafana"]["volumes"]
    assert "./deploy/monitoring/grafana/provisioning:/etc/grafana/provisioning:ro" in (
        grafana
    )
    assert "./deploy/monitoring/grafana/dashboards:/var/lib/grafana/dashboards:ro" in (
        grafana
    )
    blackbox = services()["blackbox"]
    assert (
        "./deploy/monitoring/blackbox.yml:/etc/blackbox/blackbox.yml:ro"
        in (blackbox["volumes"])
    )


def test_web_and_workers_share_one_metrics_directory_and_flower_does_not():
    for name in ("web", "worker"):
        service = services()[name]
        directory = service["environment"]["PROMETHEUS_MULTIPROC_DIR"]
        assert f"metrics:{directory}" in service["volumes"], name
    assert "PROMETHEUS_MULTIPROC_DIR" not in services()["flower"]["environment"]
    assert compose()["volumes"]["metrics"]["driver_opts"]["type"] == "tmpfs"


def test_the_scraped_host_name_is_an_allowed_host_and_the_login_is_required():
    environment = compose()["x-app"]["environment"]
    assert "web" in environment["DJANGO_ALLOWED_HOSTS"].split(":-")[1].rstrip("}")
    assert environment["METRICS_BASIC_AUTH"].startswith("${METRICS_BASIC_AUTH:?")
    config = yaml.safe_load((MONITORING_DIR / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"]
        for job in config["scrape_configs"]
    }
    assert targets["welcome-web"] == ["web:8000"]
    assert targets["flower"] == ["flower:5555"]
