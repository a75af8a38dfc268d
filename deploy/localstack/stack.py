"""The whole system on one machine: Kafka, PostgreSQL, the LLM simulator and the four services.

Every piece is a child process with its log under `<state>/logs/` and its pid
under `<state>/run/`, so `down` can stop what an earlier `up` started. An
existing Kafka, database or LLM endpoint is used instead when its URL is given.
"""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

from deploy.localstack.kafka import KafkaNode
from deploy.localstack.postgres import PostgresNode
from deploy.localstack.procs import ManagedProcess, wait_for_http

SERVICES = ("results", "streamer", "notifier", "gateway")


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
        path = self.state_dir / "auth-secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(32))
            path.chmod(0o600)
        return path.read_text().strip()

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
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap or f"127.0.0.1:{p.kafka}",
            "DATABASE_URL": self.database_url
            or f"postgresql://postgres@127.0.0.1:{p.postgres}/postgres",
            "OPENAI_BASE_URL": self.openai_base_url or f"{urls['simulator']}/v1",
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
            **self.extra_env,
        }

    def start_infrastructure(self) -> None:
        if self.kafka_bootstrap is None:
            self.kafka = KafkaNode(
                self.state_dir / "kafka",
                self.cache_dir,
                self.ports.kafka,
                self.ports.kafka_controller,
            )
            self.kafka.start()
        if self.database_url is None:
            self.postgres = PostgresNode(self.state_dir / "postgres", self.ports.postgres)
            self.postgres.start()

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
            env=env,
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
        wait_for_http(ready_url, timeout_s, alive=proc.alive, log=log_path)
        return proc

    def start(self) -> None:
        self.start_infrastructure()
        self.start_simulator()
        for name in SERVICES:
            self.start_service(name)

    def stop(self) -> None:
        """Stop every process this stack or an earlier `up` started, services first."""
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
        elif self.database_url is None:
            PostgresNode(self.state_dir / "postgres", self.ports.postgres).stop()
