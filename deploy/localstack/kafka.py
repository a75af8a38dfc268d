"""A single-node Apache Kafka broker (KRaft) from its Maven Central jars, run with Java 17."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from deploy.localstack.procs import ManagedProcess, wait_for_port

KAFKA_VERSION = os.environ.get("STREAMJOBS_KAFKA_VERSION", "4.3.1")
POM = Path(__file__).with_name("kafka-runtime.pom.xml")

LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = org.apache.kafka
logger.kafka.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
"""


def jar_dir(cache_dir: Path) -> Path:
    return cache_dir / f"kafka-{KAFKA_VERSION}" / "libs"


def ensure_jars(cache_dir: Path) -> Path:
    """Resolve the broker's runtime jars once; later runs reuse the cache."""
    libs = jar_dir(cache_dir)
    marker = libs / ".complete"
    if marker.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError(
            "Maven (mvn) is needed once to fetch the Kafka jars: apt-get install maven"
        )
    tmp = libs.with_name("libs.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(
        [
            mvn, "-q", "-B", "-f", str(POM),
            f"-Dkafka.version={KAFKA_VERSION}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}",
            "-DincludeScope=runtime",
        ],
        check=True,
    )  # fmt: skip
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    marker.touch()
    return libs


def java_bin() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise RuntimeError(
            "Java 17+ is needed to run Kafka: apt-get install openjdk-17-jre-headless"
        )
    return found


@dataclass
class KafkaNode:
    """One broker+controller; data and logs live under `state_dir`."""

    state_dir: Path
    cache_dir: Path
    port: int = 9092
    controller_port: int = 9093
    heap: str = "512m"
    extra_config: dict[str, str] = field(default_factory=dict)
    process: ManagedProcess | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _config(self) -> str:
        data = self.state_dir / "data"
        config = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": "4",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.hours": "168",
            **self.extra_config,
        }
        return "".join(f"{k}={v}\n" for k, v in config.items())

    def start(self, timeout_s: float = 60.0) -> None:
        running = ManagedProcess.from_pid_file(
            "kafka", self.state_dir / "kafka.pid", self.state_dir / "kafka.out"
        )
        if running is not None and running.alive():  # left by an earlier `up`
            self.process = running
            wait_for_port("127.0.0.1", self.port, timeout_s, alive=running.alive)
            return
        libs = ensure_jars(self.cache_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        props = self.state_dir / "server.properties"
        props.write_text(self._config())
        log4j = self.state_dir / "log4j2.properties"
        log4j.write_text(LOG4J2.format(log=self.state_dir / "server.log"))
        classpath = f"{libs}/*"
        java = java_bin()
        if not (self.state_dir / "data" / "meta.properties").exists():
            subprocess.run(
                [
                    java, "-cp", classpath, "kafka.tools.StorageTool", "format",
                    "--standalone", "-t", _cluster_id(self.state_dir), "-c", str(props),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
        self.process = ManagedProcess.spawn(
            "kafka",
            [
                java, f"-Xmx{self.heap}", f"-Xms{self.heap}", "-XX:+UseG1GC",
                "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={log4j}",
                "-cp", classpath, "kafka.Kafka", str(props),
            ],
            log_path=self.state_dir / "kafka.out",
            pid_path=self.state_dir / "kafka.pid",
        )  # fmt: skip
        wait_for_port(
            "127.0.0.1",
            self.port,
            timeout_s,
            alive=self.process.alive,
            log=self.state_dir / "kafka.out",
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace_s=20)
            self.process = None


def _cluster_id(state_dir: Path) -> str:
    path = state_dir / "cluster.id"
    if not path.exists():
        # Kafka cluster ids are 16 bytes, base64url without padding (22 chars).
        path.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode())
    return path.read_text().strip()
