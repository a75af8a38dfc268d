"""deploy/docker: no Docker engine runs here, so the compose file and Dockerfile are checked
for structure: every container builds or pulls, the services get their settings, ports and
/readyz health checks, and Prometheus and Grafana mount our config."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[2] / "deploy" / "docker"
SERVICES = {"gateway": 8080, "results": 8081, "notifier": 8082, "streamer": 8083}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    return doc


def test_every_container_has_an_image_or_a_build_and_a_healthcheck(
    compose: dict[str, Any],
) -> None:
    for name, svc in compose["services"].items():
        assert "image" in svc or "build" in svc, name
        assert svc["healthcheck"]["test"], name


def test_the_whole_system_is_in_the_compose_file(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {*SERVICES, "kafka", "postgres", "simulator", "prometheus", "grafana"}
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["postgres"]["image"] == "postgres:18"


@pytest.mark.parametrize(("name", "port"), sorted(SERVICES.items()))
def test_each_service_runs_its_module_with_settings_port_and_readyz_check(
    compose: dict[str, Any], name: str, port: int
) -> None:
    svc = compose["services"][name]
    assert svc["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert (DOCKER / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
    assert svc["command"] == ["python", "-m", f"services.{name}"]
    env = svc["environment"]
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert (
        env["DATABASE_URL"].startswith("postgresql://") and "@postgres:5432/" in env["DATABASE_URL"]
    )
    assert env["STREAMJOBS_AUTH_SECRET"].startswith("${STREAMJOBS_AUTH_SECRET:?")
    assert f"{port}:{port}" in svc["ports"]
    check = " ".join(svc["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/readyz" in check
    assert svc["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_services_reach_each_other_by_compose_name(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["gateway"]["environment"]["RESULTS_URL"] == "http://results:8081"
    assert services["streamer"]["environment"]["OPENAI_BASE_URL"].endswith(
        "http://simulator:8090/v1}"
    )
    assert services["results"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_prometheus_and_grafana_mount_our_files(compose: dict[str, Any]) -> None:
    mounts = {
        name: [v.split(":") for v in compose["services"][name]["volumes"] if v.startswith(".")]
        for name in ("prometheus", "grafana")
    }
    for name, volumes in mounts.items():
        for source, *_ in volumes:
            assert (DOCKER / source).exists(), (name, source)
    targets = {target for _, target, *_ in mounts["prometheus"]}
    assert targets == {"/etc/prometheus/prometheus.yml", "/etc/prometheus/alerts.yml"}
    assert {t for _, t, *_ in mounts["grafana"]} == {
        "/etc/grafana/provisioning",
        "/var/lib/grafana/dashboards",
    }


def test_compose_prometheus_scrapes_the_same_jobs_by_service_name() -> None:
    local = yaml.safe_load((DOCKER.parent / "prometheus" / "prometheus.yml").read_text())
    docker = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    assert docker["rule_files"] == local["rule_files"]
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in docker["scrape_configs"]}
    assert jobs == {name: [f"{name}:{port}"] for name, port in SERVICES.items()}


def test_dockerfile_is_slim_non_root_and_installs_the_project() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    user = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user and user[-1] not in ("root", "0")
    assert "pip install ." in text
    assert re.search(r'^CMD \["python", "-m", "services\.\w+"\]', text, re.MULTILINE)
