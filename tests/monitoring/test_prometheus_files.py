"""deploy/monitoring: a valid Prometheus config, alert rules that pass their tests."""

import json
import re

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.monitoring.promtool import MONITORING, run_promtool
from tests.monitoring.scrape import basic_auth

DASHBOARD = json.loads(
    (MONITORING / "grafana" / "dashboards" / "welcome-mail.json").read_text()
)
RULES = yaml.safe_load((MONITORING / "alerts.yml").read_text())
RULE_TESTS = yaml.safe_load((MONITORING / "alerts_test.yml").read_text())
ALERTS = [rule["alert"] for group in RULES["groups"] for rule in group["rules"]]
# The metrics the service exports itself (Flower's and Prometheus' own aside).
OWN_PREFIXES = ("mailer_", "users_")
OWN_METRIC = re.compile(r"\b((?:mailer|users)_[a-z_]+)\b")


def test_promtool_accepts_the_prometheus_config():
    result = run_promtool("check", "config", "prometheus.yml")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_accepts_the_alert_rules():
    result = run_promtool("check", "rules", "alerts.yml")

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_every_alert_passes_its_promtool_unit_tests():
    result = run_promtool("test", "rules", "alerts_test.yml")

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("alert", ALERTS)
def test_every_alert_has_series_that_fire_it_and_series_that_must_not(alert):
    cases = [
        case
        for test in RULE_TESTS["tests"]
        for case in test["alert_rule_test"]
        if case["alertname"] == alert
    ]

    assert any(case["exp_alerts"] for case in cases), f"nothing fires {alert}"
    assert any(not case["exp_alerts"] for case in cases), f"nothing spares {alert}"


@pytest.mark.parametrize("alert", ALERTS)
def test_every_alert_links_its_runbook_line(alert):
    docs = (MONITORING.parent.parent / "docs" / "monitoring.md").read_text()

    assert f"### {alert}" in docs


@pytest.mark.django_db
def test_rules_and_dashboard_name_only_metrics_the_service_exports(client, settings):
    settings.METRICS_BASIC_AUTH = "prometheus:rules"
    page = client.get(
        "/metrics", HTTP_AUTHORIZATION=basic_auth("prometheus:rules")
    ).content.decode()
    exported = set()
    for family in text_string_to_metric_families(page):
        exported |= {sample.name for sample in family.samples}
        exported.add(family.name)
    # A labelled counter or histogram has a TYPE line (its name ends in
    # _total for a counter) but no sample until something was counted.
    for line in page.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            exported.add(name)
            if kind == "histogram":
                exported |= {name + suffix for suffix in ("_bucket", "_count", "_sum")}

    named = set(OWN_METRIC.findall((MONITORING / "alerts.yml").read_text()))
    named |= set(OWN_METRIC.findall(" ".join(dashboard_queries())))

    assert named and named <= exported, sorted(named - exported)


def dashboard_queries() -> list[str]:
    return [
        target["expr"] for panel in DASHBOARD["panels"] for target in panel["targets"]
    ]


def test_every_dashboard_query_is_valid_promql(tmp_path):
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{index}", "expr": expr}
                    for index, expr in enumerate(dashboard_queries())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))

    result = run_promtool("check", "rules", str(path), cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_shows_the_flow_queue_failures_latency_and_oldest_mail():
    queries = " ".join(dashboard_queries())

    for metric in (
        "users_registrations_total",
        "mailer_deliveries_total",
        "mailer_outbox_rows",
        "mailer_smtp_replies_total",
        "mailer_delivery_latency_seconds_bucket",
        "mailer_outbox_oldest_undelivered_seconds",
    ):
        assert metric in queries
    assert DASHBOARD["uid"] == "welcome-mail"


@pytest.mark.django_db
def test_every_metric_the_service_exports_is_documented_with_its_labels(
    client, settings
):
    settings.METRICS_BASIC_AUTH = "prometheus:docs"
    page = client.get(
        "/metrics", HTTP_AUTHORIZATION=basic_auth("prometheus:docs")
    ).content.decode()
    docs = (MONITORING.parent.parent / "docs" / "monitoring.md").read_text()
    declared = {
        line.split()[2]: line.split()[3]
        for line in page.splitlines()
        if line.startswith("# TYPE ") and line.split()[2].startswith(OWN_PREFIXES)
    }

    assert len(declared) >= 15
    for name in declared:
        assert f"| `{name}` |" in docs, f"{name} is not in docs/monitoring.md"
