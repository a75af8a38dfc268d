"""deploy/helm/streamjobs: `helm lint` passes and `helm template` renders manifests that
parse, set only settings the services read, listen and probe on each service's port
setting, run the project's image with its real entrypoints, and give every notifier pod
its own instance and URL. helm is the version `make helm` builds into .state/tools/bin."""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from shared.settings import KafkaSaslMechanism, KafkaSecurityProtocol
from tests.unit.deploy_settings import (
    OPS_PORT_SETTING,
    SETTINGS,
    listen_ports,
    unknown_env_names,
)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "streamjobs"
CI_VALUES = CHART / "ci" / "test-values.yaml"
RELEASE = "sj"
NAMESPACE = "jobs"
# The image deploy/docker/Dockerfile builds, tagged with the project's version.
PROJECT_IMAGE = "streamjobs"
# Offline, helm renders for a Kubernetes older than the chart's kubeVersion (>= 1.28).
KUBE_VERSION = ("--kube-version", "1.30.0")


def helm_binary() -> str:
    # The pinned version `make helm` builds, not whichever helm the PATH holds.
    local = ROOT / ".state" / "tools" / "bin" / "helm"
    if not (local.is_file() and os.access(local, os.X_OK)):
        pytest.fail("helm is missing: `make helm` installs it into .state/tools/bin")
    return str(local)


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, timeout=60, check=False
    )


def render(*overrides: str) -> list[dict[str, Any]]:
    """The chart's manifests for the CI values plus `--set` overrides, parsed."""
    sets = [arg for pair in overrides for arg in ("--set", pair)]
    done = helm(
        "template", RELEASE, str(CHART), *KUBE_VERSION,
        "--namespace", NAMESPACE, "-f", str(CI_VALUES), *sets,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    return render()


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """streamjobs service -> its Deployment or StatefulSet."""
    out = {}
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
            out[component] = doc
    return out


def container_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The environment a container starts with: its ConfigMaps, then its own entries
    (a value from the downward API or a Secret is shown as its source)."""
    configmaps = by_kind(docs, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]]["data"])
    for entry in container.get("env", []):
        env[entry["name"]] = entry.get("value") or repr(entry["valueFrom"])
    return env


def containers(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, workload in workloads(docs).items():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            yield name, container


def test_helm_lint_passes() -> None:
    done = helm("lint", str(CHART), "--strict", "-f", str(CI_VALUES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_service_runs_as_its_own_workload_from_the_project_image(
    manifests: list[dict[str, Any]],
) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    found = workloads(manifests)
    assert set(found) == set(SETTINGS)
    assert found["notifier"]["kind"] == "StatefulSet"
    assert found["gateway"]["kind"] == "StatefulSet"
    for name, container in containers(manifests):
        assert container["image"] == f"{PROJECT_IMAGE}:{chart['appVersion']}", name
        assert container["command"] == ["python", "-m", f"services.{name}"]
    for name in SETTINGS:
        assert (ROOT / "services" / name / "__main__.py").is_file()
    # The tag is the project's version; the repository is the name the Dockerfile builds.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    assert f"-t {PROJECT_IMAGE}" in dockerfile


def test_the_optional_simulator_runs_from_the_same_image() -> None:
    docs = render("simulator.enabled=true")
    images = {
        c["image"]
        for w in workloads(docs).values()
        for c in w["spec"]["template"]["spec"]["containers"]
    }
    assert len(images) == 1
    simulator = workloads(docs)["simulator"]["spec"]["template"]["spec"]["containers"][0]
    assert simulator["command"][:3] == ["python", "-m", "deploy.simulator"]
    port = simulator["command"][simulator["command"].index("--port") + 1]
    assert simulator["ports"] == [{"name": "http", "containerPort": int(port)}]


@pytest.mark.parametrize("sasl", [False, True], ids=["plaintext", "sasl"])
def test_every_environment_name_is_a_setting_of_its_service(sasl: bool) -> None:
    overrides = ["kafka.caSecret.name=kafka-ca", "gateway.publicUrl=https://jobs.example.com"]
    if sasl:
        overrides += ["kafka.securityProtocol=SASL_SSL"] + [
            f"kafka.sasl.{name}.password=pw-{name}" for name in SETTINGS
        ]
    docs = render(*overrides)
    unknown = {
        name: unknown_env_names(name, container_env(docs, container))
        for name, container in containers(docs)
    }
    assert unknown == {name: set() for name in SETTINGS}
    if sasl:
        for name, container in containers(docs):
            env = container_env(docs, container)
            assert env["KAFKA_SASL_USERNAME"] == name
            assert "kafka-" + name + "-password" in env["KAFKA_SASL_PASSWORD"]


def test_extra_settings_from_values_reach_only_their_service() -> None:
    docs = render("streamer.env.STREAMER_SLOTS=128", "results.env.RESULTS_BATCH_SIZE=5000")
    envs = {name: container_env(docs, c) for name, c in containers(docs)}
    assert envs["streamer"]["STREAMER_SLOTS"] == "128"
    assert envs["results"]["RESULTS_BATCH_SIZE"] == "5000"
    assert "STREAMER_SLOTS" not in envs["results"]


@pytest.mark.parametrize(
    "override", ["results.env.RESULTS_PORT=9", "notifier.env.notifier_instances=9"]
)
def test_env_values_cannot_override_what_the_chart_derives(override: str) -> None:
    # A port or instance count given twice would let the Service, probes and lists disagree.
    done = helm(
        "template", RELEASE, str(CHART), *KUBE_VERSION, "-f", str(CI_VALUES), "--set", override
    )
    assert done.returncode != 0
    assert "the chart sets it from its own values" in done.stderr, done.stderr


@pytest.mark.parametrize(
    "overrides",
    [(), ("gateway.port=9080", "results.port=9081", "notifier.ssePort=9084", "streamer.port=9")],
    ids=["defaults", "given"],
)
def test_container_probe_and_service_ports_are_the_port_settings(
    overrides: tuple[str, ...],
) -> None:
    docs = render(*overrides)
    services = [d for d in docs if d["kind"] == "Service"]
    for name, container in containers(docs):
        settings = listen_ports(name, container_env(docs, container))
        declared = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert sorted(declared.values()) == sorted(settings.values()), name
        # /healthz and /readyz answer on the ops port.
        assert declared["http"] == settings[OPS_PORT_SETTING[name]]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] == "http", (name, probe)
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for service in services:
            if service["spec"]["selector"]["app.kubernetes.io/component"] != name:
                continue
            for port in service["spec"]["ports"]:
                assert port["targetPort"] in declared, (service["metadata"]["name"], port)
                assert port["port"] == declared[port["targetPort"]]
    if overrides:
        gateway = container_env(docs, dict(containers(docs))["gateway"])
        assert gateway["RESULTS_URL"] == f"http://{RELEASE}-streamjobs-results:9081"


def test_notifier_pods_each_own_an_instance_and_a_url() -> None:
    docs = render("notifier.replicas=3")
    (notifier,) = [w for n, w in workloads(docs).items() if n == "notifier"]
    assert notifier["spec"]["replicas"] == 3
    assert notifier["spec"]["podManagementPolicy"] == "Parallel"
    container = notifier["spec"]["template"]["spec"]["containers"][0]
    (instance,) = [e for e in container["env"] if e["name"] == "NOTIFIER_INSTANCE"]
    # The StatefulSet ordinal, from the label Kubernetes sets on each pod.
    assert instance["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    env = container_env(docs, container)
    assert env["NOTIFIER_INSTANCES"] == "3"
    ws = env["NOTIFIER_PUBLIC_WS_URLS"].split(",")
    assert ws == [f"wss://notifier-{i}.streamjobs.example.com/ws" for i in range(3)]
    assert env["NOTIFIER_PUBLIC_SSE_URLS"].split(",") == [
        f"https://notifier-{i}.streamjobs.example.com" for i in range(3)
    ]
    gateway = container_env(docs, dict(containers(docs))["gateway"])
    assert gateway["GATEWAY_NOTIFIER_WS_URLS"].split(",") == ws
    pod = f"{RELEASE}-streamjobs-notifier"
    headless = notifier["spec"]["serviceName"]
    assert gateway["GATEWAY_NOTIFIER_SSE_URLS"].split(",") == [
        f"http://{pod}-{i}.{headless}.{NAMESPACE}.svc:8084" for i in range(3)
    ]
    services = by_kind(docs, "Service")
    assert services[headless]["spec"]["clusterIP"] == "None"
    for i in range(3):
        # A Service per pod: what an ingress rule for that pod's public host points at.
        selector = services[f"{pod}-{i}"]["spec"]["selector"]
        assert selector["statefulset.kubernetes.io/pod-name"] == f"{pod}-{i}"


def test_notifier_ingress_routes_each_host_to_its_own_pod() -> None:
    docs = render("notifier.ingress.enabled=true", "notifier.replicas=2")
    ingress = by_kind(docs, "Ingress")[f"{RELEASE}-streamjobs-notifier"]
    rules = ingress["spec"]["rules"]
    assert [r["host"] for r in rules] == [f"notifier-{i}.streamjobs.example.com" for i in (0, 1)]
    for i, rule in enumerate(rules):
        paths = {p["path"]: p["backend"]["service"] for p in rule["http"]["paths"]}
        assert paths["/ws"] == {
            "name": f"{RELEASE}-streamjobs-notifier-{i}",
            "port": {"name": "http"},
        }
        assert paths["/api/v1/jobs"]["port"] == {"name": "sse"}


def test_more_notifiers_than_partitions_is_refused() -> None:
    done = helm(
        "template", RELEASE, str(CHART), *KUBE_VERSION, "-f", str(CI_VALUES),
        "--set", "notifier.replicas=5", "--set", "kafka.partitions=4",
    )  # fmt: skip
    assert done.returncode != 0
    assert "kafka.partitions must be at least notifier.replicas" in done.stderr


def test_secrets_stay_in_the_secret_and_the_database_url_only_reaches_results(
    manifests: list[dict[str, Any]],
) -> None:
    (secret,) = by_kind(manifests, "Secret").values()
    assert set(secret["stringData"]) == {"auth-secret", "database-url", "openai-api-key"}
    for configmap in by_kind(manifests, "ConfigMap").values():
        assert not {"STREAMJOBS_AUTH_SECRET", "DATABASE_URL", "OPENAI_API_KEY"} & set(
            configmap["data"]
        )
    holders = {n for n, c in containers(manifests) if "DATABASE_URL" in container_env(manifests, c)}
    assert holders == {"results"}
    for name, container in containers(manifests):
        (auth,) = [e for e in container["env"] if e["name"] == "STREAMJOBS_AUTH_SECRET"]
        assert auth["valueFrom"]["secretKeyRef"]["key"] == "auth-secret", name


def test_a_missing_auth_secret_stops_the_render() -> None:
    done = helm("template", RELEASE, str(CHART), *KUBE_VERSION)
    assert done.returncode != 0
    assert "authSecret" in done.stderr


def test_topics_are_replicated_for_a_three_broker_cluster(
    manifests: list[dict[str, Any]],
) -> None:
    common = by_kind(manifests, "ConfigMap")[f"{RELEASE}-streamjobs-common"]["data"]
    assert common["KAFKA_REPLICATION_FACTOR"] == "3"
    assert common["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
    assert len(common["KAFKA_BOOTSTRAP_SERVERS"].split(",")) == 3


def test_every_service_has_resources_and_a_disruption_budget(
    manifests: list[dict[str, Any]],
) -> None:
    for name, container in containers(manifests):
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
        assert {"cpu", "memory"} <= set(container["resources"]["limits"]), name
    budgets = {
        pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]: pdb
        for pdb in by_kind(manifests, "PodDisruptionBudget").values()
    }
    assert set(budgets) == set(SETTINGS)
    for name, workload in workloads(manifests).items():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        selector = budgets[name]["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), name


def test_streamer_grace_fits_inside_the_pods_termination_grace() -> None:
    docs = render("streamer.terminationGracePeriodSeconds=45")
    streamer = workloads(docs)["streamer"]["spec"]["template"]["spec"]
    env = container_env(docs, streamer["containers"][0])
    assert streamer["terminationGracePeriodSeconds"] == 45
    assert float(env["STREAMER_GRACE_S"]) < 45


def test_service_monitor_is_optional_and_names_jobs_by_service() -> None:
    assert "ServiceMonitor" not in {d["kind"] for d in render()}
    docs = render("serviceMonitor.enabled=true")
    (monitor,) = by_kind(docs, "ServiceMonitor").values()
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/component"
    selected = [
        s
        for s in by_kind(docs, "Service").values()
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    # One scraped Service per service, so no pod is scraped twice.
    assert sorted(s["metadata"]["labels"]["app.kubernetes.io/component"] for s in selected) == (
        sorted(SETTINGS)
    )
    assert all(e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])


def test_the_scaling_guides_install_command_renders_what_it_says() -> None:
    guide = (ROOT / "docs" / "scaling.md").read_text()
    (command,) = re.findall(r"```sh\nhelm install .*?```", guide, re.S)
    words = shlex.split(
        command.removeprefix("```sh").removesuffix("```").replace("\\\n", " ")
        .replace("$(openssl rand -hex 32)", "ab" * 32)
    )  # fmt: skip
    pairs = [value for flag, value in itertools.pairwise(words) if flag == "--set"]
    docs = render(*pairs)
    given = dict(pair.split("=", 1) for pair in pairs)
    found = workloads(docs)
    for name in SETTINGS:
        assert found[name]["spec"]["replicas"] == int(given[f"{name}.replicas"]), name
    common = by_kind(docs, "ConfigMap")[f"{RELEASE}-streamjobs-common"]["data"]
    # Every streamer owns a partition of every band.
    assert int(common["JOB_PARTITIONS"]) >= found["streamer"]["spec"]["replicas"]
    assert len(common["KAFKA_BOOTSTRAP_SERVERS"].split(",")) == 3


def test_values_schema_allows_exactly_the_kafka_options_the_services_accept() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    kafka = schema["properties"]["kafka"]["properties"]
    assert kafka["securityProtocol"]["enum"] == list(get_args(KafkaSecurityProtocol))
    assert kafka["saslMechanism"]["enum"] == list(get_args(KafkaSaslMechanism))
    done = helm(
        "template", RELEASE, str(CHART), *KUBE_VERSION, "-f", str(CI_VALUES),
        "--set", "kafka.securityProtocol=TLS",
    )  # fmt: skip
    assert done.returncode != 0
    assert "/kafka/securityProtocol" in done.stderr


@pytest.mark.parametrize("override", ["notifier.replicas=0", "gateway.port=70000"])
def test_values_schema_refuses_impossible_counts_and_ports(override: str) -> None:
    done = helm(
        "template", RELEASE, str(CHART), *KUBE_VERSION, "-f", str(CI_VALUES), "--set", override
    )
    assert done.returncode != 0
    assert "schema" in done.stderr, done.stderr


def test_replicas_of_one_service_spread_over_nodes(manifests: list[dict[str, Any]]) -> None:
    for name, workload in workloads(manifests).items():
        pod = workload["spec"]["template"]
        (spread,) = pod["spec"]["topologySpreadConstraints"]
        assert spread["topologyKey"] == "kubernetes.io/hostname"
        assert spread["labelSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        assert spread["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == name


def test_the_helm_the_tests_use_is_the_version_make_installs() -> None:
    makefile = (ROOT / "Makefile").read_text()
    tools_bin = re.search(r"^TOOLS_BIN\s*:=\s*(\S+)$", makefile, re.M)
    version = re.search(r"^HELM_VERSION\s*:=\s*(\S+)$", makefile, re.M)
    assert tools_bin is not None and version is not None
    assert Path(helm_binary()) == ROOT / tools_bin.group(1) / "helm"
    assert re.search(r"^test: .*\bhelm\b", makefile, re.M), "make test builds helm first"
    done = helm("version", "--template", "{{ .Version }}")
    assert done.stdout.strip() == version.group(1)
