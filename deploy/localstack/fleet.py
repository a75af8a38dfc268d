"""The local fleet behind `make fleet`: a Kafka cluster of N nodes, one PostgreSQL, the
simulator and M instances of each of the four services, each instance on its own ports.

It lives in its own state directory (`.state/fleet`), apart from `make run`'s `.state/stack`,
and on its own ports, so the two never mix. `fleet.json` there names every process (role,
instance, pid, ports, URLs, log) and the fleet's shape, so `down`, `status`, the chaos driver
and the tests find everything again from another process.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from deploy.localstack.kafka import KafkaNode, new_cluster_id
from deploy.localstack.postgres import PostgresNode
from deploy.localstack.procs import (
    ManagedProcess,
    StartupError,
    require_free,
    wait_for_http,
)
from deploy.localstack.stack import auth_secret
from shared.kafka import ensure_topics
from shared.revocation import ensure_revocations_topic
from shared.settings import TopicReplicationSettings

ROLES = ("results", "streamer", "notifier", "gateway")
ROOT = Path(__file__).resolve().parents[2]
BROKER_HEAP = "256m"  # three JVMs share two cores and the services' memory
BROKER_INITIAL_HEAP = "128m"
# Loopback needs no patience: a killed node is fenced, and a dead controller replaced, in
# seconds instead of the defaults' tens of seconds. The log cleaner's buffer (128 MiB by
# default, taken from the heap at start) must fit the small heap, or the node dies of it.
BROKER_CONFIG = {
    "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
    "broker.session.timeout.ms": "4000",
    "broker.heartbeat.interval.ms": "500",
    "controller.quorum.election.timeout.ms": "1000",
    "controller.quorum.fetch.timeout.ms": "2000",
    "replica.lag.time.max.ms": "10000",
    "num.partitions": "4",
}


@dataclass
class FleetPorts:
    """Every port of the fleet: the defaults plus `offset`; service instance i adds 100·i.

    The defaults stay clear of `make run` (8080-8090, 19092, 15432)."""

    offset: int = 0
    broker_base: int = 29092
    controller_base: int = 29192
    postgres_base: int = 25432
    simulator_base: int = 28090
    service_base: dict[str, int] = field(
        default_factory=lambda: {
            "gateway": 28080,
            "results": 28081,
            "notifier": 28082,
            "streamer": 28083,
            "notifier_sse": 28084,
        }
    )

    def broker(self, b: int) -> int:
        return self.broker_base + self.offset + b

    def controller(self, b: int) -> int:
        return self.controller_base + self.offset + b

    @property
    def postgres(self) -> int:
        return self.postgres_base + self.offset

    @property
    def simulator(self) -> int:
        return self.simulator_base + self.offset

    def service(self, role: str, i: int) -> int:
        """The HTTP port (ops, and the API of gateway and results) of instance `i` of `role`;
        `notifier_sse` names a notifier's SSE port."""
        return self.service_base[role] + self.offset + 100 * i


@dataclass
class Fleet:
    state_dir: Path
    cache_dir: Path
    brokers: int = 3
    instances: int = 2
    ports: FleetPorts = field(default_factory=FleetPorts)
    topic_prefix: str = "streamjobs"
    partitions: int = 4
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[tuple[str, int], ManagedProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.brokers < 1 or self.instances < 1:
            raise ValueError("a fleet has at least one broker and one instance of each service")

    # --- shape -------------------------------------------------------------------------------

    @property
    def replication_factor(self) -> int:
        return min(3, self.brokers)

    @property
    def min_insync_replicas(self) -> int:
        return min(2, self.replication_factor)

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{self.ports.broker(b)}" for b in range(self.brokers))

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.ports.postgres}/postgres"

    def own_urls(self) -> dict[str, str]:
        """The fleet's Kafka, database and LLM, as `common_env` names them."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "DATABASE_URL": self.database_url,
            "OPENAI_BASE_URL": f"{self.simulator_url}/v1",
        }

    @property
    def manifest_path(self) -> Path:
        return self.state_dir / "fleet.json"

    def url(self, role: str, i: int) -> str:
        """Base URL of instance `i` of `role` (for the notifier: its ops/WebSocket port)."""
        return f"http://127.0.0.1:{self.ports.service(role, i)}"

    def ws_url(self, i: int) -> str:
        return f"ws://127.0.0.1:{self.ports.service('notifier', i)}/ws"

    def sse_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports.service('notifier_sse', i)}"

    @property
    def simulator_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.simulator}"

    def ready_url(self, role: str, i: int) -> str:
        if role == "simulator":
            return f"{self.simulator_url}/healthz"
        return f"{self.url(role, i)}/readyz"

    def all_ports(self) -> list[int]:
        """Every port the fleet binds."""
        p = self.ports
        ports = [p.postgres, p.simulator]
        ports += [p.broker(b) for b in range(self.brokers)]
        ports += [p.controller(b) for b in range(self.brokers)]
        ports += [p.service(role, i) for role, i in self.members()]
        ports += [p.service("notifier_sse", i) for i in range(self.instances)]
        return ports

    def members(self) -> Iterator[tuple[str, int]]:
        """Every service instance, in start order."""
        for role in ROLES:
            for i in range(self.instances):
                yield role, i

    def auth_secret(self) -> str:
        return auth_secret(self.state_dir)

    def cluster_id(self) -> str:
        """One id for every node: nodes formatted with different ids never form a quorum."""
        path = self.state_dir / "cluster.id"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(new_cluster_id())
        return path.read_text().strip()

    def kafka_node(self, b: int) -> KafkaNode:
        voters = ",".join(
            f"{n + 1}@127.0.0.1:{self.ports.controller(n)}" for n in range(self.brokers)
        )
        return KafkaNode(
            self.state_dir / f"kafka-{b}",
            self.cache_dir,
            self.ports.broker(b),
            self.ports.controller(b),
            heap=BROKER_HEAP,
            initial_heap=BROKER_INITIAL_HEAP,
            extra_config=BROKER_CONFIG,
            node_id=b + 1,
            voters=voters,
            cluster_id=self.cluster_id(),
            replication=self.replication_factor,
            min_insync=self.min_insync_replicas,
        )

    def postgres_node(self) -> PostgresNode:
        return PostgresNode(self.state_dir / "postgres", self.ports.postgres)

    # --- environment ---------------------------------------------------------------------------

    def fleet_urls(self) -> dict[str, str]:
        """Each role's instance URLs as comma lists, in instance order."""
        n = range(self.instances)
        return {
            "gateway": ",".join(self.url("gateway", i) for i in n),
            "results": ",".join(self.url("results", i) for i in n),
            "streamer": ",".join(self.url("streamer", i) for i in n),
            "notifier_ws": ",".join(self.ws_url(i) for i in n),
            "notifier_sse": ",".join(self.sse_url(i) for i in n),
        }

    def common_env(self) -> dict[str, str]:
        lists = self.fleet_urls()
        return {
            "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
            "KAFKA_REPLICATION_FACTOR": str(self.replication_factor),
            "KAFKA_MIN_INSYNC_REPLICAS": str(self.min_insync_replicas),
            **self.own_urls(),
            "OPENAI_API_KEY": "sim",
            "STREAMJOBS_AUTH_SECRET": self.auth_secret(),
            "TOPIC_PREFIX": self.topic_prefix,
            "JOB_PARTITIONS": str(self.partitions),
            "NOTIFIER_INSTANCES": str(self.instances),
            "NOTIFIER_PUBLIC_WS_URLS": lists["notifier_ws"],
            "NOTIFIER_PUBLIC_SSE_URLS": lists["notifier_sse"],
            "GATEWAY_NOTIFIER_WS_URLS": lists["notifier_ws"],
            "GATEWAY_NOTIFIER_SSE_URLS": lists["notifier_sse"],
            # Until the gateway reads the lists above, its single-URL settings name instance 0.
            "GATEWAY_PUBLIC_WS_URL": self.ws_url(0),
            "NOTIFIER_SSE_URL": self.sse_url(0),
            "PYTHONUNBUFFERED": "1",
        }

    def instance_env(self, role: str, i: int) -> dict[str, str]:
        """What instance `i` of `role` reads on top of `common_env`: its identity and ports."""
        port = str(self.ports.service(role, i))
        own: dict[str, str] = {"INSTANCE_ID": f"{role}-{i}"}
        if role == "gateway":
            own |= {
                "GATEWAY_PORT": port,
                "GATEWAY_INSTANCE_ID": f"gateway-{i}",
                "RESULTS_URL": self.url("results", i),
            }
        elif role == "results":
            own |= {"RESULTS_PORT": port}
        elif role == "notifier":
            own |= {
                "NOTIFIER_PORT": port,
                "NOTIFIER_SSE_PORT": str(self.ports.service("notifier_sse", i)),
                "NOTIFIER_INSTANCE": str(i),
            }
        elif role == "streamer":
            own |= {"STREAMER_PORT": port}
        return {**self.common_env(), **own, **self.extra_env}

    # --- processes -----------------------------------------------------------------------------

    def _pid_path(self, role: str, i: int) -> Path:
        return self.state_dir / "run" / f"{role}-{i}.pid"

    def _log_path(self, role: str, i: int) -> Path:
        return self.state_dir / "logs" / f"{role}-{i}.log"

    def process(self, role: str, i: int) -> ManagedProcess | None:
        """The running (or last started) process of `role` instance `i`; `kafka` is a broker."""
        known = self.processes.get((role, i))
        if known is not None:
            return known
        if role == "kafka":
            node_dir = self.state_dir / f"kafka-{i}"
            return ManagedProcess.from_pid_file(
                "kafka", node_dir / "kafka.pid", node_dir / "server.log"
            )
        if role == "postgres":
            return None
        return ManagedProcess.from_pid_file(role, self._pid_path(role, i), self._log_path(role, i))

    def _launch(self, role: str, i: int) -> ManagedProcess:
        running = self.process(role, i)
        if running is not None and running.alive():
            self.processes[role, i] = running
            return running
        args = (
            ["-m", "deploy.simulator", "--host", "127.0.0.1", "--port", str(self.ports.simulator)]
            if role == "simulator"
            else ["-m", f"services.{role}"]
        )
        # The simulator reads its SIM_* settings from `extra_env` too.
        env = (
            {**self.common_env(), **self.extra_env}
            if role == "simulator"
            else self.instance_env(role, i)
        )
        self._pid_path(role, i).parent.mkdir(parents=True, exist_ok=True)
        proc = ManagedProcess.spawn(
            f"{role}-{i}",
            [sys.executable, *args],
            log_path=self._log_path(role, i),
            pid_path=self._pid_path(role, i),
            env=env,
            cwd=ROOT,
        )
        self.processes[role, i] = proc
        return proc

    def _wait(self, role: str, i: int, timeout_s: float) -> None:
        proc = self.processes[role, i]
        try:
            wait_for_http(
                self.ready_url(role, i), timeout_s, alive=proc.alive, log=self._log_path(role, i)
            )
        except StartupError as exc:
            raise StartupError(f"{role}-{i} did not become ready: {exc}") from None

    def start_process(self, role: str, i: int, *, timeout_s: float = 90.0) -> None:
        """Start one instance of `role` (or one broker, `kafka`) and wait until it is ready."""
        if role == "kafka":
            node = self._launch_broker(i)
            node.wait_ready(timeout_s)
            return
        self._launch(role, i)
        self._wait(role, i, timeout_s)

    def _launch_broker(self, b: int) -> KafkaNode:
        node = self.kafka_node(b)
        node.launch()
        if node.process is not None:  # held here: the node object itself is thrown away
            self.processes["kafka", b] = node.process
        return node

    def kill(self, role: str, i: int) -> None:
        """kill -9 one process, as a crash would (a broker's JVM, or a service instance)."""
        proc = self.process(role, i)
        if proc is not None and proc.alive():
            proc.kill()
        self.processes.pop((role, i), None)

    def start(self) -> None:
        """Start every part not running yet; on any failure stop them all again."""
        try:
            self.check_ports()
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._write_manifest()
            # Every voter first: none opens its listener before a quorum has formed.
            nodes = [self._launch_broker(b) for b in range(self.brokers)]
            self.postgres_node().start()
            self._launch("simulator", 0)
            for node in nodes:
                node.wait_ready(90)
            asyncio.run(self._create_topics())
            self._wait("simulator", 0, 60)
            # results-0 migrates the database before any other instance touches it; the rest
            # start together, which on two cores is faster than one after another.
            self.start_process("results", 0)
            rest = [m for m in self.members() if m != ("results", 0)]
            for role, i in rest:
                self._launch(role, i)
            for role, i in rest:
                self._wait(role, i, 120)
            self._write_manifest()
        except BaseException:
            self.stop()
            raise

    async def _create_topics(self) -> None:
        """Once every broker has registered (a topic of 3 replicas needs 3 brokers): every topic
        with the fleet's replication, before any service might create one with its own."""
        await wait_for_brokers(self.bootstrap_servers, self.brokers, timeout_s=90)
        replication = TopicReplicationSettings(
            kafka_replication_factor=self.replication_factor,
            kafka_min_insync_replicas=self.min_insync_replicas,
        )
        try:
            await ensure_topics(
                self.bootstrap_servers, self.topic_prefix, self.partitions, replication=replication
            )
            await ensure_revocations_topic(
                self.bootstrap_servers, self.topic_prefix, replication=replication
            )
        except KafkaError as exc:
            raise StartupError(f"could not create the fleet's topics: {exc}") from exc

    def check_ports(self) -> None:
        """Before starting anything: every port of a part not yet running is free."""
        wanted: list[tuple[str, int]] = []
        for b in range(self.brokers):
            if not _alive(self.process("kafka", b)):
                wanted += [
                    (f"Kafka node {b}", self.ports.broker(b)),
                    (f"the controller of Kafka node {b}", self.ports.controller(b)),
                ]
        if not self.postgres_node().is_running():
            wanted.append(("PostgreSQL", self.ports.postgres))
        if not _alive(self.process("simulator", 0)):
            wanted.append(("the LLM simulator", self.ports.simulator))
        for role, i in self.members():
            if not _alive(self.process(role, i)):
                wanted.append((f"{role}-{i}", self.ports.service(role, i)))
                if role == "notifier":
                    wanted.append((f"the SSE of {role}-{i}", self.ports.service("notifier_sse", i)))
        require_free(wanted)

    def stop(self) -> None:
        """Stop every process of the fleet, services first, whoever started them."""
        for role, i in reversed(list(self.members())):
            proc = self.process(role, i)
            if proc is not None:
                proc.stop(grace_s=25)
            self.processes.pop((role, i), None)
        simulator = self.process("simulator", 0)
        if simulator is not None:
            simulator.stop()
        self.processes.pop(("simulator", 0), None)
        for b in range(self.brokers):
            broker = self.process("kafka", b)
            if broker is not None:
                broker.stop(grace_s=20)
            self.processes.pop(("kafka", b), None)
        if (self.state_dir / "postgres").exists():
            self.postgres_node().stop()

    # --- what runs -----------------------------------------------------------------------------

    def entries(self) -> list[dict[str, Any]]:
        """Every process of the fleet with its role, instance, pid, ports, URLs and log."""
        rows: list[dict[str, Any]] = []
        for b in range(self.brokers):
            proc = self.process("kafka", b)
            rows.append(
                {
                    "role": "kafka",
                    "instance": b,
                    "node_id": b + 1,
                    "pid": proc.pid if proc else None,
                    "ports": {
                        "client": self.ports.broker(b),
                        "controller": self.ports.controller(b),
                    },
                    "urls": {"bootstrap": f"127.0.0.1:{self.ports.broker(b)}"},
                    "log": str(self.state_dir / f"kafka-{b}" / "server.log"),
                }
            )
        pg = self.postgres_node()
        rows.append(
            {
                "role": "postgres",
                "instance": 0,
                "pid": pg.postmaster_pid() if pg.is_running() else None,
                "ports": {"postgres": pg.port},
                "urls": {"database": self.database_url},
                "log": str(pg.state_dir / "postgres.log"),
            }
        )
        for role, i in [("simulator", 0), *self.members()]:
            proc = self.process(role, i)
            port = self.ports.simulator if role == "simulator" else self.ports.service(role, i)
            ports = {"http": port}
            urls = {"base": self.simulator_url if role == "simulator" else self.url(role, i)}
            if role == "notifier":
                ports["sse"] = self.ports.service("notifier_sse", i)
                urls |= {"ws": self.ws_url(i), "sse": self.sse_url(i)}
            rows.append(
                {
                    "role": role,
                    "instance": i,
                    "pid": proc.pid if proc else None,
                    "ports": ports,
                    "urls": urls,
                    "ready": self.ready_url(role, i),
                    "log": str(self._log_path(role, i)),
                }
            )
        return rows

    def _write_manifest(self) -> None:
        manifest = {
            "fleet": {
                "brokers": self.brokers,
                "instances": self.instances,
                "port_offset": self.ports.offset,
                "topic_prefix": self.topic_prefix,
                "partitions": self.partitions,
                "extra_env": self.extra_env,
            },
            "bootstrap_servers": self.bootstrap_servers,
            "database_url": self.database_url,
            "replication_factor": self.replication_factor,
            "min_insync_replicas": self.min_insync_replicas,
            "urls": self.fleet_urls(),
            "processes": self.entries(),
        }
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=1))
        tmp.replace(self.manifest_path)

    def refresh_manifest(self) -> None:
        """After a restart: the new pids into fleet.json."""
        self._write_manifest()

    @classmethod
    def load(cls, state_dir: Path, cache_dir: Path) -> Fleet | None:
        """The fleet whose state directory this is, as its fleet.json describes it."""
        try:
            shape = json.loads((state_dir / "fleet.json").read_text())["fleet"]
        except (OSError, ValueError, KeyError):
            return None
        return cls(
            state_dir=state_dir,
            cache_dir=cache_dir,
            brokers=int(shape["brokers"]),
            instances=int(shape["instances"]),
            ports=FleetPorts(offset=int(shape["port_offset"])),
            topic_prefix=str(shape["topic_prefix"]),
            partitions=int(shape["partitions"]),
            extra_env=dict(shape.get("extra_env") or {}),
        )


async def wait_for_brokers(bootstrap: str, count: int, *, timeout_s: float) -> None:
    """Until the cluster's metadata lists `count` brokers."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    seen = 0
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            seen = len((await admin.describe_cluster()).get("brokers") or [])
            if seen >= count:
                return
        except KafkaError:
            pass  # not every node answers yet
        finally:
            await admin.close()
        if loop.time() > deadline:
            raise StartupError(f"only {seen} of {count} Kafka nodes registered in {timeout_s:g}s")
        await asyncio.sleep(0.5)


def _alive(proc: ManagedProcess | None) -> bool:
    return proc is not None and proc.alive()
