"""The whole system on one machine: Kafka, PostgreSQL, the LLM simulator and the four services.

Every piece is a child process with its log under `<state>/logs/` and its pid
under `<state>/run/`, so `down` can stop what an earlier `up` started: what the stack
owns is what its state directory holds, whatever the environment says. An existing
Kafka, database or LLM endpoint is used instead when its URL is given.

With `kafka_security="sasl"` the stack's own broker takes SASL/SCRAM-SHA-512 only, each
service connects as its own principal, and the ACLs of `deploy.localstack.acls` decide
what each may read and write.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from aiokafka.errors import KafkaError

from deploy.localstack.acls import (
    ADMIN_USER,
    DOCTOR_PRINCIPAL,
    SCRAM_MECHANISM,
    SERVICE_PRINCIPALS,
    apply_acls,
    service_acls,
)
from deploy.localstack.kafka import KafkaNode
from deploy.localstack.postgres import PostgresNode
from deploy.localstack.procs import (
    ManagedProcess,
    StartupError,
    require_free,
    wait_for_http,
)
from services.gateway.admission_topics import admission_topics
from shared.kafka import ensure_created, ensure_topics
from shared.revocation import ensure_revocations_topic

SERVICES = ("results", "streamer", "notifier", "gateway")
KafkaSecurity = Literal["plaintext", "sasl"]


def auth_secret(state_dir: Path) -> str:
    """The token signing secret of the stack (or fleet) in `state_dir`, made once (mode 0600)."""
    path = state_dir / "auth-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


@dataclass
class Ports:
    kafka: int = 19092
    kafka_controller: int = 19093
    postgres: int = 15432
    simulator: int = 8090
    gateway: int = 8080
    results: int = 8081
    notifier: int = 8082
    streamer: int = 8083
    notifier_sse: int = 8084


@dataclass
class Stack:
    state_dir: Path
    cache_dir: Path
    ports: Ports = field(default_factory=Ports)
    kafka_bootstrap: str | None = None  # an existing cluster; None starts one
    database_url: str | None = None  # an existing server; None starts one
    openai_base_url: str | None = None  # a real endpoint; None starts the simulator
    topic_prefix: str = "streamjobs"
    kafka_security: KafkaSecurity = "plaintext"  # of the stack's own broker
    extra_env: dict[str, str] = field(default_factory=dict)
    kafka: KafkaNode | None = None
    postgres: PostgresNode | None = None
    processes: dict[str, ManagedProcess] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    def auth_secret(self) -> str:
        return auth_secret(self.state_dir)

    def kafka_users(self) -> dict[str, str]:
        """SCRAM passwords of the admin, each service and the doctor, made once (mode 0600)."""
        path = self.state_dir / "kafka-users.json"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            names = (ADMIN_USER, *SERVICE_PRINCIPALS, DOCTOR_PRINCIPAL)
            path.touch(mode=0o600)
            path.write_text(json.dumps({n: secrets.token_hex(16) for n in names}, indent=1))
        users: dict[str, str] = json.loads(path.read_text())
        return users

    @property
    def sasl(self) -> bool:
        """Whether the services talk SASL to the stack's own broker."""
        return self.kafka_security == "sasl" and self.kafka_bootstrap is None

    def kafka_credentials(self, principal: str) -> dict[str, str]:
        """The client settings (shared.settings) that make a process `principal`.

        For the stack's own broker they are always explicit, so a shell that sourced another
        stack's settings cannot make a service speak the wrong protocol; for an existing
        cluster the environment's settings pass through untouched.
        """
        if self.kafka_bootstrap is not None:
            return {}
        if not self.sasl:
            return {"KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}
        return {
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": SCRAM_MECHANISM,
            "KAFKA_SASL_USERNAME": principal,
            "KAFKA_SASL_PASSWORD": self.kafka_users()[principal],
        }

    def own_urls(self) -> dict[str, str]:
        """What `service_env` names for the parts this stack runs itself."""
        p = self.ports
        return {
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{p.kafka}",
            "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{p.postgres}/postgres",
            "OPENAI_BASE_URL": f"{self.urls()['simulator']}/v1",
        }

    def urls(self) -> dict[str, str]:
        p = self.ports
        return {
            "gateway": f"http://127.0.0.1:{p.gateway}",
            "results": f"http://127.0.0.1:{p.results}",
            "notifier": f"http://127.0.0.1:{p.notifier}",
            "notifier_ws": f"ws://127.0.0.1:{p.notifier}/ws",
            "streamer": f"http://127.0.0.1:{p.streamer}",
            "simulator": f"http://127.0.0.1:{p.simulator}",
        }

    def service_env(self) -> dict[str, str]:
        """The environment every service process reads its settings from."""
        p = self.ports
        urls = self.urls()
        own = self.own_urls()
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap or own["KAFKA_BOOTSTRAP_SERVERS"],
            "DATABASE_URL": self.database_url or own["DATABASE_URL"],
            "OPENAI_BASE_URL": self.openai_base_url or own["OPENAI_BASE_URL"],
            "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "sim")
            if self.openai_base_url
            else "sim",
            "STREAMJOBS_AUTH_SECRET": self.auth_secret(),
            "TOPIC_PREFIX": self.topic_prefix,
            "GATEWAY_PORT": str(p.gateway),
            "RESULTS_PORT": str(p.results),
            "RESULTS_URL": urls["results"],
            "NOTIFIER_PORT": str(p.notifier),
            "NOTIFIER_SSE_PORT": str(p.notifier_sse),
            "NOTIFIER_SSE_URL": f"http://127.0.0.1:{p.notifier_sse}",
            "GATEWAY_PUBLIC_WS_URL": urls["notifier_ws"],
            "STREAMER_PORT": str(p.streamer),
            "PYTHONUNBUFFERED": "1",
            # One broker holds one replica, whatever a shell that sourced the fleet's settings
            # exports; an existing cluster keeps the environment's values.
            **(
                {"KAFKA_REPLICATION_FACTOR": "1", "KAFKA_MIN_INSYNC_REPLICAS": "1"}
                if self.kafka_bootstrap is None
                else {}
            ),
            **self.extra_env,
        }

    def _kafka_node(self) -> KafkaNode:
        return KafkaNode(
            self.state_dir / "kafka",
            self.cache_dir,
            self.ports.kafka,
            self.ports.kafka_controller,
            scram_users=self.kafka_users() if self.sasl else None,
        )

    def start_infrastructure(self) -> None:
        if self.kafka_bootstrap is None:
            self.kafka = self._kafka_node()
            self.kafka.start()
            if self.sasl:
                self._grant(self.kafka)
        if self.database_url is None:
            self.postgres = PostgresNode(self.state_dir / "postgres", self.ports.postgres)
            self.postgres.start()

    def _grant(self, kafka: KafkaNode) -> None:
        """As the admin: create the topics (services may not) and every service's ACLs."""
        env = self.service_env()
        partitions = int(env.get("JOB_PARTITIONS", "4"))
        admission_partitions = int(env.get("GATEWAY_ADMISSION_PARTITIONS", "8"))
        admin = kafka.admin_options()

        async def create() -> None:
            await ensure_topics(
                kafka.bootstrap_servers, self.topic_prefix, partitions, security=admin
            )
            await ensure_revocations_topic(
                kafka.bootstrap_servers, self.topic_prefix, security=admin
            )
            await ensure_created(
                kafka.bootstrap_servers,
                admission_topics(self.topic_prefix, admission_partitions),
                security=admin,
            )

        try:
            asyncio.run(create())
        except KafkaError as exc:
            raise StartupError(f"could not create the Kafka topics as {ADMIN_USER}: {exc}") from exc
        apply_acls(
            kafka.bootstrap_servers,
            ADMIN_USER,
            kafka.admin_password,
            service_acls(self.topic_prefix),
        )

    def start_simulator(self) -> None:
        if self.openai_base_url is not None:
            return
        self.spawn(
            "simulator",
            ["-m", "deploy.simulator", "--host", "127.0.0.1", "--port", str(self.ports.simulator)],
            ready_url=f"{self.urls()['simulator']}/healthz",
        )

    def start_service(self, name: str, *, timeout_s: float = 60.0, **env: str) -> ManagedProcess:
        ops = {
            "gateway": self.ports.gateway,
            "results": self.ports.results,
            "notifier": self.ports.notifier,
            "streamer": self.ports.streamer,
        }[name]
        return self.spawn(
            name,
            ["-m", f"services.{name}"],
            ready_url=f"http://127.0.0.1:{ops}/readyz",
            timeout_s=timeout_s,
            env={**self.kafka_credentials(name), **env},
        )

    def spawn(
        self,
        name: str,
        args: list[str],
        *,
        ready_url: str,
        timeout_s: float = 60.0,
        env: dict[str, str] | None = None,
    ) -> ManagedProcess:
        pid_path = self.run_dir / f"{name}.pid"
        log_path = self.logs / f"{name}.log"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        running = ManagedProcess.from_pid_file(name, pid_path, log_path)
        if running is not None and running.alive():
            wait_for_http(ready_url, timeout_s, alive=running.alive, log=log_path)
            self.processes[name] = running
            return running
        proc = ManagedProcess.spawn(
            name,
            [sys.executable, *args],
            log_path=log_path,
            pid_path=pid_path,
            env={**self.service_env(), **(env or {})},
            cwd=Path(__file__).resolve().parents[2],
        )
        self.processes[name] = proc
        try:
            wait_for_http(ready_url, timeout_s, alive=proc.alive, log=log_path)
        except StartupError as exc:
            raise StartupError(f"{name} did not become ready: {exc}") from None
        return proc

    def start(self) -> None:
        """Start every part that is not running yet; on any failure stop them all again."""
        try:
            self.check_ports()
            self.start_infrastructure()
            self.start_simulator()
            for name in SERVICES:
                self.start_service(name)
        except BaseException:
            self.stop()
            raise

    def _running(self, name: str) -> bool:
        if name == "kafka":
            pid_path = self.state_dir / "kafka" / "kafka.pid"
        elif name == "postgres":
            return PostgresNode(self.state_dir / "postgres", self.ports.postgres).is_running()
        else:
            pid_path = self.run_dir / f"{name}.pid"
        proc = ManagedProcess.from_pid_file(name, pid_path, pid_path)
        return proc is not None and proc.alive()

    def check_ports(self) -> None:
        """Before starting anything: every port a part not yet running will bind is free."""
        p = self.ports
        wanted: list[tuple[str, int]] = []
        if self.kafka_bootstrap is None and not self._running("kafka"):
            wanted += [("Kafka", p.kafka), ("the Kafka controller", p.kafka_controller)]
        if self.database_url is None and not self._running("postgres"):
            wanted.append(("PostgreSQL", p.postgres))
        if self.openai_base_url is None and not self._running("simulator"):
            wanted.append(("the LLM simulator", p.simulator))
        for name in SERVICES:
            if not self._running(name):
                wanted.append((name, getattr(p, name)))
        if not self._running("notifier"):
            wanted.append(("the notifier's SSE", p.notifier_sse))
        require_free(wanted)

    def stop(self) -> None:
        """Stop every process this stack or an earlier `up` started, services first.

        Kafka and PostgreSQL are ours when their data lives in our state directory, also
        when the environment names them (a shell that sourced `.state/stack.env` does).
        """
        for name in (*reversed(SERVICES), "simulator"):
            proc = self.processes.pop(name, None) or ManagedProcess.from_pid_file(
                name, self.run_dir / f"{name}.pid", self.logs / f"{name}.log"
            )
            if proc is not None:
                proc.stop(grace_s=25)
        if self.kafka is not None:
            self.kafka.stop()
        else:
            kafka = ManagedProcess.from_pid_file(
                "kafka",
                self.state_dir / "kafka" / "kafka.pid",
                self.state_dir / "kafka" / "kafka.out",
            )
            if kafka is not None:
                kafka.stop(grace_s=20)
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None
        elif (self.state_dir / "postgres").exists():
            PostgresNode(self.state_dir / "postgres", self.ports.postgres).stop()
