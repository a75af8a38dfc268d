"""Settings every service shares, read from the environment (pydantic-settings).

Each service subclasses `CommonSettings` with its own fields, builds it once in
`__main__` and passes it down; tests build it from explicit values.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.auth import ADMIN_TOKEN_TTL_S, DEFAULT_LEEWAY_S, MIN_SECRET_BYTES, USER_TOKEN_TTL_S

# --- Kafka client security: how every producer, consumer and admin client authenticates ---

KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
KafkaSaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaSecuritySettings(BaseSettings):
    """`KAFKA_SECURITY_PROTOCOL` and friends; `shared.kafka.client_options` turns them into
    aiokafka arguments. Wrong combinations stop the service at start-up, not at first send."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    kafka_security_protocol: KafkaSecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: KafkaSaslMechanism = Field(
        default="SCRAM-SHA-512", description="used with SASL_PLAINTEXT and SASL_SSL"
    )
    kafka_sasl_username: str = Field(default="", description="this service's Kafka principal")
    kafka_sasl_password: SecretStr = SecretStr("")
    kafka_ssl_cafile: str = Field(
        default="", description="PEM bundle that signs the brokers' certificates; empty: system CAs"
    )

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaSecuritySettings:
        if self.kafka_security_protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password.get_secret_value()
        ):
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
            )
        return self


# --- end of the Kafka client security block ---


class TopicReplicationSettings(BaseSettings):
    """`KAFKA_REPLICATION_FACTOR` and `KAFKA_MIN_INSYNC_REPLICAS`: how missing topics are
    created (`shared.kafka.create_missing_topics`); every service has them through
    `CommonSettings`. One broker (`make run`) takes 1/1; a cluster of three or more takes
    3/2, so a record acknowledged with `acks=all` survives the loss of any one broker."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    kafka_replication_factor: int = Field(
        default=1, ge=1, description="replicas of each topic a service creates"
    )
    kafka_min_insync_replicas: int = Field(
        default=1, ge=1, description="min.insync.replicas of each topic a service creates"
    )

    @model_validator(mode="after")
    def _isr_within_replicas(self) -> TopicReplicationSettings:
        if self.kafka_min_insync_replicas > self.kafka_replication_factor:
            raise ValueError(
                f"KAFKA_MIN_INSYNC_REPLICAS={self.kafka_min_insync_replicas} exceeds "
                f"KAFKA_REPLICATION_FACTOR={self.kafka_replication_factor}: no write could succeed"
            )
        return self


class CommonSettings(KafkaSecuritySettings, TopicReplicationSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092", description="comma-separated host:port list"
    )
    topic_prefix: str = "streamjobs"
    job_partitions: int = Field(default=4, ge=1, description="partitions of each topic")
    streamjobs_auth_secret: SecretStr = Field(
        description="HMAC-SHA256 key that signs API tokens (JWT HS256); the same in every"
        f" service, at least {MIN_SECRET_BYTES} bytes"
    )
    streamjobs_auth_leeway_s: float = Field(
        default=DEFAULT_LEEWAY_S, ge=0, description="clock skew allowed on a token's `iat`"
    )
    streamjobs_auth_cache_size: int = Field(
        default=10_000, ge=0, description="verified tokens kept in memory (LRU); 0 disables"
    )
    streamjobs_auth_revocations_catchup_s: float = Field(
        default=15.0,
        gt=0,
        description="start-up waits this long to read every revocation before serving",
    )
    streamjobs_token_ttl_s: int = Field(
        default=USER_TOKEN_TTL_S, gt=0, description="lifetime of a minted user token"
    )
    streamjobs_admin_token_ttl_s: int = Field(
        default=ADMIN_TOKEN_TTL_S, gt=0, description="lifetime of a minted admin token"
    )
    streamjobs_workloads_file: str = Field(
        default="",
        description="TOML file of job types and models (shared/workloads.py); empty: the"
        " packaged defaults. Every service must read the same file",
    )
    log_level: str = "INFO"
    log_json: bool = True
    gc_young_threshold: int = Field(
        default=50_000,
        ge=0,
        description="allocations between two collections of Python's young generation"
        " (Python's own default: 700); 0 keeps Python's",
    )
    instance_id: str = Field(default="", description="defaults to host:pid")

    @field_validator("streamjobs_auth_secret")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr) -> SecretStr:
        # HS256 is only as strong as its key: RFC 7518 asks for at least the hash size.
        if len(value.get_secret_value().encode()) < MIN_SECRET_BYTES:
            raise ValueError(
                f"STREAMJOBS_AUTH_SECRET must be at least {MIN_SECRET_BYTES} bytes"
                " (e.g. `openssl rand -hex 32`)"
            )
        return value
