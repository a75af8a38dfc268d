"""deploy/docker: no Docker engine runs here, so the compose files and Dockerfile are checked
for structure: every container builds or pulls, the services get only settings they read,
their ports and /readyz health checks, the scalable ones scale, the notifiers each know
their instance, Prometheus and Grafana mount our config, and the SASL overlay gives every
service its own principal with the ACLs of deploy/localstack/acls.py."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.localstack.acls import SERVICE_PRINCIPALS, Acl, service_acls
from deploy.localstack.kafka import new_cluster_id
from shared.kafka import JOB_TOPIC_CONFIGS
from shared.topics import job_topics, retry_topic
from tests.unit.deploy_settings import OPS_PORT_SETTING, listen_ports, unknown_env_names

DOCKER = Path(__file__).resolve().parents[2] / "deploy" / "docker"
SERVICES = {"gateway": 8080, "results": 8081, "notifier": 8082, "streamer": 8083}
# Compose service -> the streamjobs service it runs. Notifiers are named per instance.
NOTIFIERS = ["notifier-0", "notifier-1"]
APP_CONTAINERS = {"gateway": "gateway", "results": "results", "streamer": "streamer"} | {
    name: "notifier" for name in NOTIFIERS
}
SCALABLE = ["gateway", "results", "streamer"]


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
    assert set(services) == {
        *APP_CONTAINERS,
        *("kafka", "postgres", "simulator", "prometheus", "grafana", "edge"),
    }
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["postgres"]["image"] == "postgres:18"


def env_of(svc: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in svc.get("environment", {}).items()}


@pytest.mark.parametrize(("container", "name"), sorted(APP_CONTAINERS.items()))
def test_each_service_runs_its_module_with_settings_and_readyz_check_on_its_port(
    compose: dict[str, Any], container: str, name: str
) -> None:
    svc = compose["services"][container]
    assert svc["image"] == "streamjobs:local"
    assert svc["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert (DOCKER / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
    assert svc["command"] == ["python", "-m", f"services.{name}"]
    env = env_of(svc)
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["STREAMJOBS_AUTH_SECRET"].startswith("${STREAMJOBS_AUTH_SECRET:?")
    port = listen_ports(name, env)[OPS_PORT_SETTING[name]]
    assert port == SERVICES[name]
    check = " ".join(svc["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/readyz" in check
    assert svc["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_only_the_results_service_gets_the_database_url(compose: dict[str, Any]) -> None:
    holders = {c for c in APP_CONTAINERS if "DATABASE_URL" in env_of(compose["services"][c])}
    assert holders == {"results"}
    url = env_of(compose["services"]["results"])["DATABASE_URL"]
    assert url.startswith("postgresql://") and "@postgres:5432/" in url


@pytest.mark.parametrize("overlay", [False, True], ids=["plain", "sasl"])
def test_every_environment_name_is_a_setting_of_its_service(
    compose: dict[str, Any], sasl_compose: dict[str, Any], overlay: bool
) -> None:
    doc = sasl_compose if overlay else compose
    unknown = {
        container: unknown_env_names(name, env_of(doc["services"][container]))
        for container, name in APP_CONTAINERS.items()
    }
    assert unknown == {container: set() for container in APP_CONTAINERS}


@pytest.mark.parametrize(("container", "name"), sorted(APP_CONTAINERS.items()))
def test_published_container_ports_are_the_port_settings(
    compose: dict[str, Any], container: str, name: str
) -> None:
    svc = compose["services"][container]
    ports = set(listen_ports(name, env_of(svc)).values())
    for mapping in svc.get("ports", []):
        assert int(str(mapping).rsplit(":", 1)[-1]) in ports, (container, mapping)


@pytest.mark.parametrize("name", SCALABLE)
def test_scalable_services_have_no_fixed_name_or_host_port(
    compose: dict[str, Any], name: str
) -> None:
    # `--scale name=N` starts N containers: a container_name or a host port would collide.
    svc = compose["services"][name]
    assert "container_name" not in svc
    assert "ports" not in svc
    assert "replicas" not in svc.get("deploy", {})


def test_the_edge_is_the_one_host_entry_to_every_gateway(compose: dict[str, Any]) -> None:
    edge = compose["services"]["edge"]
    assert edge["ports"] == ["8080:8080"]
    config = (DOCKER / edge["volumes"][0].split(":")[0]).read_text()
    gateway_port = listen_ports("gateway", env_of(compose["services"]["gateway"]))
    # Resolved per request through Docker's DNS, so containers added by --scale get traffic.
    assert "resolver 127.0.0.11" in config
    assert f"set $gateway http://gateway:{gateway_port['GATEWAY_PORT']};" in config
    assert "proxy_pass $gateway;" in config
    assert "proxy_buffering off;" in config  # the SSE relay streams


def test_each_notifier_knows_its_instance_and_every_instances_url(
    compose: dict[str, Any],
) -> None:
    envs = [env_of(compose["services"][name]) for name in NOTIFIERS]
    assert [int(env["NOTIFIER_INSTANCE"]) for env in envs] == list(range(len(NOTIFIERS)))
    assert {int(env["NOTIFIER_INSTANCES"]) for env in envs} == {len(NOTIFIERS)}
    assert len({env["NOTIFIER_PUBLIC_WS_URLS"] for env in envs}) == 1
    ws_urls = envs[0]["NOTIFIER_PUBLIC_WS_URLS"].split(":-", 1)[1].rstrip("}").split(",")
    sse_urls = envs[0]["NOTIFIER_PUBLIC_SSE_URLS"].split(":-", 1)[1].rstrip("}").split(",")
    for i, name in enumerate(NOTIFIERS):
        host_ports = {
            int(m.split(":")[1]): int(m.split(":")[0]) for m in compose["services"][name]["ports"]
        }
        own = listen_ports("notifier", envs[i])
        assert ws_urls[i] == f"ws://localhost:{host_ports[own['NOTIFIER_PORT']]}/ws"
        assert sse_urls[i] == f"http://localhost:{host_ports[own['NOTIFIER_SSE_PORT']]}"
    gateway = env_of(compose["services"]["gateway"])
    assert gateway["GATEWAY_NOTIFIER_WS_URLS"] == envs[0]["NOTIFIER_PUBLIC_WS_URLS"]
    assert gateway["GATEWAY_NOTIFIER_SSE_URLS"].split(",") == [
        f"http://{name}:{listen_ports('notifier', envs[i])['NOTIFIER_SSE_PORT']}"
        for i, name in enumerate(NOTIFIERS)
    ]


def test_job_partitions_leave_every_notifier_a_share(
    compose: dict[str, Any], sasl_compose: dict[str, Any]
) -> None:
    # A notifier owns whole chunk partitions: with fewer partitions than notifiers one idles.
    counts = {env_of(compose["services"][c])["JOB_PARTITIONS"] for c in APP_CONTAINERS}
    counts.add(env_of(sasl_compose["services"]["kafka-setup"])["JOB_PARTITIONS"])
    (partitions,) = counts
    assert int(partitions) >= len(NOTIFIERS)


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


def test_compose_prometheus_scrapes_every_container_of_each_service() -> None:
    local = yaml.safe_load((DOCKER.parent / "prometheus" / "prometheus.yml").read_text())
    docker = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    assert docker["rule_files"] == local["rule_files"]
    jobs = {j["job_name"]: j for j in docker["scrape_configs"]}
    assert set(jobs) == set(SERVICES)
    for name in SCALABLE:
        # Docker's DNS answers a scaled service's name with every container's address.
        (sd,) = jobs[name]["dns_sd_configs"]
        assert (sd["names"], sd["type"], sd["port"]) == ([name], "A", SERVICES[name])
    assert jobs["notifier"]["static_configs"][0]["targets"] == [
        f"{name}:{SERVICES['notifier']}" for name in NOTIFIERS
    ]


def test_dockerfile_is_slim_non_root_and_installs_the_project() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    user = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user and user[-1] not in ("root", "0")
    # Dependencies at the lock's versions, then the project itself without them.
    assert "uv export --frozen" in text and "--require-hashes" in text
    assert "pip install --no-deps ." in text
    assert re.search(r'^CMD \["python", "-m", "services\.\w+"\]', text, re.MULTILINE)


# --- the Kafka image and data, bind addresses, and the SASL overlay ---------------------------


def test_kafka_image_is_the_version_of_the_local_stacks_jars(compose: dict[str, Any]) -> None:
    pom = (DOCKER.parent / "localstack" / "kafka-runtime.pom.xml").read_text()
    jars = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    assert jars is not None
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{jars.group(1)}"


def test_kafka_writes_its_data_into_the_mounted_volume(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    mounted = {v.split(":")[1] for v in kafka["volumes"] if v.startswith("kafka-data:")}
    assert kafka["environment"]["KAFKA_LOG_DIRS"] in mounted
    # A named volume: it outlives `docker compose down` (not `down -v`) and re-creations.
    assert "kafka-data" in compose["volumes"]


@pytest.mark.parametrize(("container", "name"), sorted(APP_CONTAINERS.items()))
def test_services_listen_on_every_interface_inside_their_container(
    compose: dict[str, Any], container: str, name: str
) -> None:
    # results and notifier bind 127.0.0.1 by default; in a container that would hide them
    # from the gateway, Prometheus and the published ports.
    assert compose["services"][container]["environment"][f"{name.upper()}_HOST"] == "0.0.0.0"


def merged(base: Any, override: Any) -> Any:
    """docker compose's merge of an override file: mappings merge, everything else replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merged(base[key], value) if key in base else value
        return out
    return override


@pytest.fixture(scope="module")
def sasl_compose(compose: dict[str, Any]) -> dict[str, Any]:
    override = yaml.safe_load((DOCKER / "docker-compose.sasl.yml").read_text())
    doc: dict[str, Any] = merged(compose, override)
    return doc


def test_sasl_overlay_leaves_no_plaintext_listener_and_denies_by_default(
    sasl_compose: dict[str, Any],
) -> None:
    env = sasl_compose["services"]["kafka"]["environment"]
    protocols = dict(
        pair.split(":") for pair in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    listeners = {item.split("://")[0] for item in env["KAFKA_LISTENERS"].split(",")}
    assert listeners == set(protocols)
    assert set(protocols.values()) == {"SASL_PLAINTEXT"}
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
    assert env["KAFKA_SUPER_USERS"] == "User:admin"
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    # Host clients and services use SCRAM; PLAIN (the admin alone) only inside.
    assert env["KAFKA_LISTENER_NAME_HOST_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    assert "--command-config" in " ".join(sasl_compose["services"]["kafka"]["healthcheck"]["test"])


@pytest.mark.parametrize(("container", "name"), sorted(APP_CONTAINERS.items()))
def test_sasl_overlay_gives_each_service_its_own_principal_after_setup(
    sasl_compose: dict[str, Any], container: str, name: str
) -> None:
    svc = sasl_compose["services"][container]
    env = svc["environment"]
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    assert env["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert env["KAFKA_SASL_USERNAME"] == name
    assert env["KAFKA_SASL_PASSWORD"].startswith(f"${{KAFKA_{name.upper()}_PASSWORD:?")
    assert svc["depends_on"]["kafka-setup"]["condition"] == "service_completed_successfully"
    setup = sasl_compose["services"]["kafka-setup"]
    assert setup["environment"][f"{name.upper()}_PASSWORD"] == env["KAFKA_SASL_PASSWORD"]


def test_sasl_setup_runs_the_mounted_script_after_kafka_is_healthy(
    sasl_compose: dict[str, Any],
) -> None:
    setup = sasl_compose["services"]["kafka-setup"]
    assert setup["image"] == sasl_compose["services"]["kafka"]["image"]
    source, target, *_ = setup["volumes"][0].split(":")
    assert (DOCKER / source).is_file()
    assert setup["entrypoint"][-1] == target
    assert setup["depends_on"]["kafka"]["condition"] == "service_healthy"


def script_grants(text: str, prefix: str) -> list[Acl]:
    """The ACLs the setup script's `grant` lines create, with `$P` read as `prefix`."""
    acls: list[Acl] = []
    for line in text.splitlines():
        if not line.startswith("grant "):
            continue
        principal, operation, resource, pattern, *names = shlex.split(line)[1:]
        for name in names:
            acls.append(Acl(principal, resource, name.replace("$P", prefix), pattern, operation))
    return sorted(acls)


def test_sasl_setup_script_grants_exactly_the_acl_table() -> None:
    text = (DOCKER / "kafka-setup.sh").read_text()
    assert script_grants(text, "streamjobs") == service_acls("streamjobs")
    created = set(re.findall(r"^user (\w+) ", text, re.MULTILINE))
    assert created == set(SERVICE_PRINCIPALS)


def test_local_kafka_cluster_ids_never_start_with_a_dash() -> None:
    # StorageTool reads "-t -abc…" as a missing argument: such an id stops the broker's format.
    ids = [new_cluster_id() for _ in range(5000)]
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_sasl_setup_script_creates_job_topics_with_the_brokers_append_time() -> None:
    # The streamer does not run a job appended after its accept_by only on such topics.
    text = (DOCKER / "kafka-setup.sh").read_text().replace("\\\n", " ")
    configured = re.search(r"^topics --config (\S+) (.+)$", text, re.MULTILINE)
    assert configured is not None
    key, value = configured.group(1).split("=")
    assert {key: value} == JOB_TOPIC_CONFIGS
    topics = {t.replace("$P", "streamjobs") for t in shlex.split(configured.group(2))}
    assert topics == {*job_topics(), retry_topic()}
