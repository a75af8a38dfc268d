"""The Grafana dashboard and its provisioning: the JSON loads, every panel queries only
metrics the services export, and every part of the system has its panels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from deploy.prometheus.promql import metric_names, unknown_names
from tests.integration.test_ops_prometheus import all_service_metric_names, run_promtool

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "streamjobs.json"


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def query_panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def exprs() -> list[str]:
    return [t["expr"] for p in query_panels() for t in p["targets"]]


def test_dashboard_loads_with_unique_ids_and_a_query_in_every_panel() -> None:
    doc = dashboard()
    assert doc["uid"] == "streamjobs"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in query_panels():
        assert panel["targets"], panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_panels_do_not_overlap_on_the_grid() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, (panel["title"], cells.get((x, y)))
                cells[(x, y)] = panel["title"]


def test_every_panel_queries_only_metrics_the_services_export() -> None:
    assert unknown_names(exprs(), all_service_metric_names()) == {}


def test_dashboard_covers_every_part_of_the_system() -> None:
    used = set().union(*(metric_names(e) for e in exprs()))
    wanted = {
        # throughput
        "streamjobs_gateway_jobs_submitted_total",
        "streamjobs_streamer_jobs_started_total",
        "streamjobs_streamer_jobs_completed_total",
        "streamjobs_streamer_jobs_failed_total",
        "streamjobs_streamer_jobs_cancelled_total",
        # latency
        "streamjobs_streamer_queue_wait_seconds_bucket",
        "streamjobs_streamer_time_to_first_token_seconds_bucket",
        "streamjobs_streamer_job_duration_seconds_bucket",
        # tokens, upstream, lag
        "streamjobs_streamer_tokens_streamed_total",
        "streamjobs_streamer_upstream_errors_total",
        "streamjobs_streamer_breaker_state",
        "streamjobs_streamer_consumer_lag_records",
        "streamjobs_results_consumer_lag_records",
        # persistence
        "streamjobs_results_events_persisted_total",
        "streamjobs_results_db_write_seconds_bucket",
        # notifier
        "streamjobs_notifier_connections",
        "streamjobs_notifier_subscriptions",
        "streamjobs_notifier_frames_sent_total",
        "streamjobs_notifier_frames_dropped_total",
        "streamjobs_notifier_resyncs_total",
        # HTTP
        "streamjobs_gateway_http_requests_total",
        "streamjobs_gateway_http_request_duration_seconds_bucket",
    }
    assert wanted - used == set()


def test_queue_wait_panel_shows_p50_p95_p99_per_band() -> None:
    panel = next(p for p in query_panels() if p["title"] == "Queue wait by band")
    quantiles = sorted(t["expr"].split(",")[0] for t in panel["targets"])
    assert quantiles == [
        "histogram_quantile(0.5",
        "histogram_quantile(0.95",
        "histogram_quantile(0.99",
    ]
    assert all("sum by (priority, le)" in t["expr"] for t in panel["targets"])


def test_provisioning_points_grafana_at_prometheus_and_the_dashboard_folder() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert [d["type"] for d in ds["datasources"]] == ["prometheus"]
    boards = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "streamjobs.yml").read_text()
    )
    (provider,) = boards["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_every_panel_query_parses_as_promql(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule (Grafana's variables filled in)."""
    rules = [
        {
            "record": f"dashboard:query_{i}",
            "expr": e.replace("$__rate_interval", "1m").replace("$__range", "1h"),
        }
        for i, e in enumerate(exprs())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    code, out = run_promtool("check", "rules", str(path))
    assert code == 0, out
    assert f"SUCCESS: {len(rules)} rules found" in out
