"""The Grafana dashboard and the Prometheus alerting rules in packaging/.

``promtool`` (from Debian's prometheus package, see scripts/ensure-promtool) checks the
rules, runs their unit tests (packaging/prometheus/nodemedic-alerts.test.yaml) and parses
every dashboard query. Every metric the two reference must be one the agent exports.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.metrics import AGENT_METRIC_NAMES, PROCESS_METRIC_NAMES
from agent.probes.catalog import CATALOG
from remediations.service import RemediationService
from tests.conftest import REPO
from tests.unit.test_metrics import promtool

DASHBOARD = REPO / "packaging" / "grafana" / "nodemedic-dashboard.json"
ALERTS = REPO / "packaging" / "prometheus" / "nodemedic-alerts.yaml"
ALERT_TESTS = REPO / "packaging" / "prometheus" / "nodemedic-alerts.test.yaml"

PROMETHEUS_SERIES = frozenset({"up"})
"""Series Prometheus itself records for every scrape target."""


_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
     "bool", "offset", "inf", "nan"}
)  # fmt: skip


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def _panels() -> list[dict[str, Any]]:
    return [panel for panel in _dashboard()["panels"] if panel["type"] != "row"]


def _dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in _panels() for target in panel["targets"]]


def _alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = re.findall(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", text)
    return {name for name in names if name not in _KEYWORDS}


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )


def _exported() -> frozenset[str]:
    return (
        frozenset(CATALOG)
        | AGENT_METRIC_NAMES
        | PROCESS_METRIC_NAMES
        | RemediationService.METRIC_NAMES
        | PROMETHEUS_SERIES
    )


def test_metric_name_extraction_ignores_functions_labels_and_keywords() -> None:
    expr = (
        'sum by (probe) (increase(nodemedic_probe_failures_total{job=~"$job", x="a{b}"}'
        "[$__rate_interval])) > 0 and on (instance) up == 0 or vector(0)"
    )

    assert metric_names(expr) == {"nodemedic_probe_failures_total", "up"}


def test_dashboard_and_alerts_reference_only_metrics_the_agent_exports() -> None:
    referenced: dict[str, set[str]] = {}
    for expr in _dashboard_exprs():
        for name in metric_names(expr):
            referenced.setdefault(name, set()).add("dashboard")
    for rule in _alert_rules():
        for name in metric_names(rule["expr"]):
            referenced.setdefault(name, set()).add(f"alert {rule['alert']}")

    unknown = {name: sorted(where) for name, where in referenced.items() if name not in _exported()}
    assert unknown == {}
    # The kit covers what the issue asks for.
    for name in (
        "nodemedic_conditions_firing_by_severity",
        "nodemedic_remediation_runs_total",
        "nodemedic_remediation_breaker_state",
        "nodemedic_mqtt_outbox_events",
        "nodemedic_mqtt_outbox_oldest_age_seconds",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "nodemedic_probe_up",
        "nodemedic_event_loop_lag_seconds",
    ):
        assert "dashboard" in referenced.get(name, set()), f"the dashboard has no {name}"


def test_alerts_cover_the_agent_failure_modes() -> None:
    alerts = {rule["alert"]: rule for rule in _alert_rules()}

    for name in (
        "NodemedicAgentDown",
        "NodemedicOutboxGrowing",
        "NodemedicRemediationBreakerOpen",
        "NodemedicRemediationFailing",
        "NodemedicProbeFailing",
        "NodemedicConditionsCritical",
    ):
        assert name in alerts, f"missing alert {name}"
    for rule in alerts.values():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


@pytest.mark.promtool
def test_promtool_accepts_the_alerting_rules() -> None:
    result = _promtool("check", "rules", str(ALERTS))

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alert_rules())} rules found" in result.stdout


@pytest.mark.promtool
def test_alerts_fire_when_they_should_in_promtool_unit_tests() -> None:
    result = _promtool("test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)

    assert result.returncode == 0, result.stdout + result.stderr
    # Every alert has at least one test case.
    tests = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))
    tested = {
        case["alertname"] for test in tests["tests"] for case in test.get("alert_rule_test", [])
    }
    assert tested == {rule["alert"] for rule in _alert_rules()}


@pytest.mark.promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses rule expressions: each query becomes a recording rule, with
    # Grafana's variables replaced by what Grafana would send.
    substitutions = {"$__rate_interval": "5m", "$job": ".+", "$instance": ".+"}
    rules = []
    for index, query in enumerate(_dashboard_exprs()):
        expr = query
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"unknown Grafana variable in {query}"
        rules.append({"record": f"dashboard:query{index}", "expr": expr})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "q", "rules": rules}]}), encoding="utf-8")

    result = _promtool("check", "rules", str(path))

    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_is_a_well_formed_grafana_model() -> None:
    dashboard = _dashboard()
    variables = {var["name"] for var in dashboard["templating"]["list"]}

    assert dashboard["uid"] == "nodemedic-agents"
    assert {"datasource", "job", "instance"} <= variables
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in _panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}, panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids, panel["title"]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            # Every query follows the dashboard's job and agent selection.
            if "up{" in target["expr"] or "nodemedic_" in target["expr"]:
                assert "$instance" in target["expr"], target["expr"]
