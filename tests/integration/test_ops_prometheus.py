"""Our Prometheus config and alert rules: promtool accepts them, every alert is unit-tested
both ways, and every metric the rules read is one a service exports."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from deploy.prometheus.promql import exported_names, unknown_names
from deploy.prometheus.promtool import CONFIG, RULE_TESTS, RULES, PromtoolMissing, promtool
from services.gateway.metrics import GatewayMetrics
from services.notifier.metrics import NotifierMetrics
from services.results.metrics import ResultsMetrics
from services.streamer.metrics import StreamerMetrics


def run_promtool(*args: str) -> tuple[int, str]:
    try:
        return promtool(*args)
    except PromtoolMissing as exc:
        pytest.fail(str(exc))


def all_service_metric_names() -> set[str]:
    """Every series name the four services can expose, each on its own fresh registry."""
    names: set[str] = set()
    for build in (StreamerMetrics, GatewayMetrics, ResultsMetrics, NotifierMetrics):
        registry = CollectorRegistry()
        build(registry)
        names |= exported_names(registry)
    return names


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_scrape_config_and_finds_the_rules() -> None:
    code, out = run_promtool("check", "config", str(CONFIG))
    assert code == 0, out
    assert "1 rule files found" in out


def test_promtool_accepts_the_alert_rules() -> None:
    code, out = run_promtool("check", "rules", str(RULES))
    assert code == 0, out
    assert f"SUCCESS: {len(alert_rules())} rules found" in out


def test_alert_unit_tests_pass() -> None:
    code, out = run_promtool("test", "rules", str(RULE_TESTS))
    assert code == 0, out
    assert "SUCCESS" in out


def test_scrape_config_has_the_four_services_and_not_the_simulator() -> None:
    doc = yaml.safe_load(CONFIG.read_text())
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in doc["scrape_configs"]
    }
    assert targets == {
        "gateway": ["127.0.0.1:8080"],
        "results": ["127.0.0.1:8081"],
        "notifier": ["127.0.0.1:8082"],
        "streamer": ["127.0.0.1:8083"],
    }
    assert doc["rule_files"] == ["alerts.yml"]


def test_every_alert_has_a_wait_a_severity_and_says_what_to_do() -> None:
    for rule in alert_rules():
        name = rule["alert"]
        assert "for" in rule, name
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"].strip(), name
        assert len(rule["annotations"]["description"]) > 40, name


def test_every_alert_is_tested_firing_and_quiet() -> None:
    doc = yaml.safe_load(RULE_TESTS.read_text())
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested quiet"


def test_alert_expressions_read_only_metrics_the_services_export() -> None:
    exprs = [rule["expr"] for rule in alert_rules()]
    assert unknown_names(exprs, all_service_metric_names()) == {}


def test_names_check_catches_a_metric_nobody_exports() -> None:
    assert unknown_names(
        ["rate(streamjobs_streamer_jobs_finished_total[5m])"], all_service_metric_names()
    ) == {
        "rate(streamjobs_streamer_jobs_finished_total[5m])": {
            "streamjobs_streamer_jobs_finished_total"
        }
    }


def test_promtool_check_metrics_flags_a_bad_exposition() -> None:
    code, out = run_promtool_stdin(b"# HELP jobs x\n# TYPE jobs counter\njobs 1\n")
    assert code != 0
    assert '"_total" suffix' in out


def test_missing_promtool_fails_naming_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(PromtoolMissing, match="Debian package `prometheus`"):
        promtool("--version")


def run_promtool_stdin(data: bytes) -> tuple[int, str]:
    try:
        return promtool("check", "metrics", stdin=data)
    except PromtoolMissing as exc:
        pytest.fail(str(exc))


def test_promtool_accepts_the_compose_scrape_config_with_the_rules_beside_it(
    tmp_path: Path,
) -> None:
    """deploy/docker/prometheus.yml as docker compose mounts it: alerts.yml in the same folder."""
    shutil.copy(CONFIG.parents[1] / "docker" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(RULES, tmp_path / "alerts.yml")
    code, out = run_promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert code == 0, out
