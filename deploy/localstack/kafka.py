"""An Apache Kafka node (KRaft, broker and controller in one) from its Maven Central jars, run
with Java 17: alone (`make run`, the suite) or as one voter of a cluster (`make fleet`)."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from deploy.localstack.acls import ADMIN_USER, SCRAM_MECHANISM
from deploy.localstack.procs import ManagedProcess, StartupError, wait_for_port

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
        raise StartupError(
            "Maven (mvn) is needed once to fetch the Kafka jars: apt-get install maven"
        )
    tmp = libs.with_name("libs.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    done = subprocess.run(
        [
            mvn, "-q", "-B", "-f", str(POM),
            f"-Dkafka.version={KAFKA_VERSION}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}",
            "-DincludeScope=runtime",
        ],
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise StartupError(
            f"Maven could not fetch the Kafka {KAFKA_VERSION} jars (exit {done.returncode}); "
            "is Maven Central reachable?"
        )
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
        raise StartupError(
            "Java 17+ is needed to run Kafka: apt-get install openjdk-17-jre-headless"
        )
    return found


@dataclass
class KafkaNode:
    """One broker+controller; data and logs live under `state_dir`.

    With `scram_users` (name -> password, the admin among them) the client listener takes
    SASL/SCRAM-SHA-512 only, the users are written into the metadata when the storage is
    formatted, and the StandardAuthorizer denies whatever no ACL allows; the admin is the
    one super user. The controller listener takes SASL/PLAIN for the admin alone (KRaft
    controllers do not take SCRAM), so no one reaches the quorum anonymously either.
    """

    state_dir: Path
    cache_dir: Path
    port: int = 9092
    controller_port: int = 9093
    heap: str = "512m"
    extra_config: dict[str, str] = field(default_factory=dict)
    scram_users: dict[str, str] | None = None
    process: ManagedProcess | None = None
    # In a cluster: this node's id, every voter as `id@host:port,...` (one static quorum) and
    # the cluster id all nodes were formatted with. Alone: node 1, its own single-voter quorum.
    node_id: int = 1
    voters: str = ""
    cluster_id: str = ""
    # Replicas of the internal topics (offsets, transaction state) and the broker's default
    # min.insync.replicas; a cluster of three gives 3 and 2.
    replication: int = 1
    min_insync: int = 1
    initial_heap: str = ""  # -Xms; empty: the same as `heap`

    @property
    def security(self) -> str:
        return "sasl" if self.scram_users else "plaintext"

    @property
    def admin_password(self) -> str:
        if not self.scram_users:
            raise ValueError("a PLAINTEXT broker has no admin principal")
        return self.scram_users[ADMIN_USER]

    def admin_options(self) -> dict[str, str]:
        """aiokafka arguments of the admin principal (empty for a PLAINTEXT broker)."""
        if not self.scram_users:
            return {}
        return {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": SCRAM_MECHANISM,
            "sasl_plain_username": ADMIN_USER,
            "sasl_plain_password": self.admin_password,
        }

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _config(self) -> str:
        data = self.state_dir / "data"
        quorum = (
            {"controller.quorum.voters": self.voters}
            if self.voters
            else {"controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}"}
        )
        config = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            **quorum,
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": "4",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": str(self.replication),
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": str(self.replication),
            "transaction.state.log.min.isr": str(self.min_insync),
            "share.coordinator.state.topic.replication.factor": str(self.replication),
            "share.coordinator.state.topic.min.isr": str(self.min_insync),
            "min.insync.replicas": str(self.min_insync),
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.hours": "168",
            **(self._sasl_config() if self.scram_users else {}),
            **self.extra_config,
        }
        return "".join(f"{k}={v}\n" for k, v in config.items())

    def _sasl_config(self) -> dict[str, str]:
        password = self.admin_password
        return {
            "listeners": f"SASL_PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"SASL_PLAINTEXT://127.0.0.1:{self.port}",
            "listener.security.protocol.map": (
                "CONTROLLER:SASL_PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
            ),
            "inter.broker.listener.name": "SASL_PLAINTEXT",
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{ADMIN_USER}" password="{password}";'
            ),
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": (
                "org.apache.kafka.common.security.plain.PlainLoginModule required "
                f'username="{ADMIN_USER}" password="{password}" user_{ADMIN_USER}="{password}";'
            ),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{ADMIN_USER}",
            "allow.everyone.if.no.acl.found": "false",
        }

    def _format_args(self) -> list[str]:
        """`--add-scram` for each user: KRaft stores SCRAM credentials in its metadata log."""
        args: list[str] = []
        for name, password in sorted((self.scram_users or {}).items()):
            args += ["--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]"]
        return args

    def start(self, timeout_s: float = 60.0) -> None:
        self.launch()
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until the client listener accepts connections (a cluster's nodes open it only once
        the quorum has formed, so launch every voter before waiting on any)."""
        process = self.process
        if process is None:
            raise StartupError(f"Kafka in {self.state_dir} was not launched")
        wait_for_port(
            "127.0.0.1", self.port, timeout_s, alive=process.alive, log=self.state_dir / "kafka.out"
        )

    def launch(self) -> None:
        """Format the storage once and start the JVM, without waiting for it."""
        running = ManagedProcess.from_pid_file(
            "kafka", self.state_dir / "kafka.pid", self.state_dir / "kafka.out"
        )
        if running is not None and running.alive():  # left by an earlier `up`
            self.process = running
            return
        java = java_bin()
        libs = ensure_jars(self.cache_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        formatted = (self.state_dir / "data" / "meta.properties").exists()
        marker = self.state_dir / "security"
        if formatted and marker.exists() and marker.read_text().strip() != self.security:
            raise StartupError(
                f"the Kafka data in {self.state_dir} was made for {marker.read_text().strip()} "
                f"clients, not {self.security}: make clean first"
            )
        props = self.state_dir / "server.properties"
        props.touch()
        props.chmod(0o600)  # holds the admin's password under SASL
        props.write_text(self._config())
        log4j = self.state_dir / "log4j2.properties"
        log4j.write_text(LOG4J2.format(log=self.state_dir / "server.log"))
        classpath = f"{libs}/*"
        if not formatted:
            done = subprocess.run(
                [
                    java, "-cp", classpath, "kafka.tools.StorageTool", "format",
                    *([] if self.voters else ["--standalone"]),
                    "-t", self.cluster_id or _cluster_id(self.state_dir), "-c", str(props),
                    *self._format_args(),
                ],
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )  # fmt: skip
            if done.returncode != 0:
                err = done.stderr.decode(errors="replace").strip().splitlines()
                raise StartupError(
                    f"formatting Kafka storage in {self.state_dir} failed: "
                    f"{err[-1] if err else done.returncode}"
                )
            marker.write_text(self.security)
        self.process = ManagedProcess.spawn(
            "kafka",
            [
                java, f"-Xmx{self.heap}", f"-Xms{self.initial_heap or self.heap}", "-XX:+UseG1GC",
                "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={log4j}",
                "-cp", classpath, "kafka.Kafka", str(props),
            ],
            log_path=self.state_dir / "kafka.out",
            pid_path=self.state_dir / "kafka.pid",
        )  # fmt: skip

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace_s=20)
            self.process = None


def _cluster_id(state_dir: Path) -> str:
    path = state_dir / "cluster.id"
    if not path.exists():
        path.write_text(new_cluster_id())
    return path.read_text().strip()


def new_cluster_id() -> str:
    """16 random bytes, base64url without padding (22 chars), as Kafka's own tool makes them.

    One in 64 such ids starts with "-", which StorageTool's argument parser takes for an
    option ("-t expected one argument"): draw again, as Kafka's Uuid.randomUuid does.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id
