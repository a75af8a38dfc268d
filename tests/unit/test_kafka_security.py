"""Kafka client security settings: what each KAFKA_SECURITY_PROTOCOL turns into for aiokafka,
wrong combinations refused at start-up, the local broker's SASL configuration, and the ACL
table docs/security.md shows."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError

from deploy.localstack.__main__ import UsageError, build_stack
from deploy.localstack.acls import ADMIN_USER, service_acls
from deploy.localstack.kafka import KafkaNode
from deploy.localstack.stack import Stack
from services.results.settings import ResultsSettings
from shared.kafka import client_options
from shared.settings import KafkaSecuritySettings


def test_plaintext_default_adds_no_client_options() -> None:
    assert client_options(KafkaSecuritySettings()) == {}


def test_sasl_settings_come_from_the_documented_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "results")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    settings = ResultsSettings(streamjobs_auth_secret="x" * 32)
    assert client_options(settings) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "results",
        "sasl_plain_password": "s3cret",
    }
    assert "s3cret" not in repr(settings)


def test_sasl_ssl_verifies_the_broker_with_a_tls_context() -> None:
    options = client_options(
        KafkaSecuritySettings(
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_username="gateway",
            kafka_sasl_password="pw",
        )
    )
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"


def test_ssl_reads_the_ca_file_it_is_given(tmp_path: Path) -> None:
    # A CA file that cannot be read fails when the options are built, at start-up.
    with pytest.raises(FileNotFoundError):
        client_options(
            KafkaSecuritySettings(
                kafka_security_protocol="SSL", kafka_ssl_cafile=str(tmp_path / "missing.pem")
            )
        )


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_without_credentials_is_refused_at_start_up(protocol: str) -> None:
    with pytest.raises(ValidationError, match="KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"):
        KafkaSecuritySettings(kafka_security_protocol=protocol, kafka_sasl_username="gateway")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [("kafka_security_protocol", "SASL"), ("kafka_sasl_mechanism", "GSSAPI")],
)
def test_unknown_protocols_and_mechanisms_are_refused(field: str, value: str) -> None:
    with pytest.raises(ValidationError):
        KafkaSecuritySettings(**{field: value})  # type: ignore[arg-type]


def properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_local_sasl_broker_has_no_plaintext_listener_and_one_super_user(tmp_path: Path) -> None:
    node = KafkaNode(tmp_path, tmp_path, 1, 2, scram_users={ADMIN_USER: "pw", "gateway": "g"})
    config = properties(node._config())
    assert "PLAINTEXT:PLAINTEXT" not in config["listener.security.protocol.map"]
    assert all(
        protocol == "SASL_PLAINTEXT"
        for _, protocol in (
            p.split(":") for p in config["listener.security.protocol.map"].split(",")
        )
    )
    assert config["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert config["super.users"] == "User:admin"
    assert config["allow.everyone.if.no.acl.found"] == "false"
    assert config["authorizer.class.name"].endswith("StandardAuthorizer")
    assert node._format_args() == [
        "--add-scram", "SCRAM-SHA-512=[name=admin,password=pw]",
        "--add-scram", "SCRAM-SHA-512=[name=gateway,password=g]",
    ]  # fmt: skip


def test_local_plaintext_broker_is_unchanged(tmp_path: Path) -> None:
    config = properties(KafkaNode(tmp_path, tmp_path, 1, 2)._config())
    assert config["listeners"].startswith("PLAINTEXT://127.0.0.1:1,")
    assert "authorizer.class.name" not in config


def test_local_stack_gives_each_service_its_own_principal(tmp_path: Path) -> None:
    stack = Stack(state_dir=tmp_path, cache_dir=tmp_path, kafka_security="sasl")
    users = stack.kafka_users()
    assert (tmp_path / "kafka-users.json").stat().st_mode & 0o777 == 0o600
    creds = {name: stack.kafka_credentials(name) for name in ("gateway", "results")}
    assert creds["gateway"]["KAFKA_SASL_USERNAME"] == "gateway"
    assert creds["gateway"]["KAFKA_SASL_PASSWORD"] == users["gateway"]
    assert creds["results"]["KAFKA_SASL_PASSWORD"] == users["results"]
    assert len(set(users.values())) == len(users)


def test_local_stack_reaches_every_service_over_loopback(tmp_path: Path) -> None:
    # results and notifier bind 127.0.0.1 by default; the local stack must need no more.
    env = Stack(state_dir=tmp_path, cache_dir=tmp_path).service_env()
    for key in ("RESULTS_URL", "NOTIFIER_SSE_URL", "GATEWAY_PUBLIC_WS_URL", "OPENAI_BASE_URL"):
        assert "//127.0.0.1:" in env[key], key
    assert not {"RESULTS_HOST", "NOTIFIER_HOST"} & set(env)


def documented_grants() -> set[tuple[str, str, str]]:
    """(principal, operation, topic) from the table in docs/security.md, with P = streamjobs."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    grants: set[tuple[str, str, str]] = set()
    for row in re.findall(r"^\| `(\w+)` \|(.*)$", doc, re.MULTILINE):
        principal, rest = row
        writes, reads = rest.split("|")[:2]
        for operation, cell in (("write", writes), ("read", reads)):
            for name in re.findall(r"`(P\.[^`]+)`", cell):
                base, _, bands = name.partition("{")
                for band in bands.rstrip("}").split(",") if bands else [""]:
                    grants.add((principal, operation, (base + band).replace("P.", "streamjobs.")))
    return grants


def test_the_documented_acl_table_is_the_one_applied() -> None:
    applied = {
        (acl.principal, acl.operation, acl.name)
        for acl in service_acls()
        if acl.resource == "topic" and acl.operation != "describe"
    }
    assert documented_grants() == applied


def test_the_stacks_own_urls_in_the_environment_still_mean_its_own_servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A shell that sourced .state/stack.env exports the stack's own URLs.
    monkeypatch.setenv("STREAMJOBS_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("STREAMJOBS_STACK_PORTS", "kafka=29092,postgres=25432")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:29092")
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:25432/postgres")
    monkeypatch.setenv("OPENAI_BASE_URL", "https://api.openai.com/v1")
    stack = build_stack()
    assert (stack.kafka_bootstrap, stack.database_url) == (None, None)
    assert stack.openai_base_url == "https://api.openai.com/v1"  # someone else's: kept
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db.internal:5432/jobs")
    assert build_stack().database_url == "postgresql://app@db.internal:5432/jobs"


def test_the_kafka_security_choice_is_remembered_with_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMJOBS_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("STREAMJOBS_KAFKA_SECURITY", raising=False)
    assert build_stack().kafka_security == "plaintext"
    (tmp_path / "stack" / "kafka").mkdir(parents=True)
    (tmp_path / "stack" / "kafka" / "security").write_text("sasl")
    assert build_stack().kafka_security == "sasl"
    monkeypatch.setenv("STREAMJOBS_KAFKA_SECURITY", "kerberos")
    with pytest.raises(UsageError, match="plaintext or sasl"):
        build_stack()
