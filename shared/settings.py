"""Settings every service shares, read from the environment (pydantic-settings).

Each service subclasses `CommonSettings` with its own fields, builds it once in
`__main__` and passes it down; tests build it from explicit values.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092", description="comma-separated host:port list"
    )
    topic_prefix: str = "streamjobs"
    job_partitions: int = Field(default=4, ge=1, description="partitions of each topic")
    streamjobs_auth_secret: SecretStr = Field(
        description="HMAC key that signs API tokens; the same in every service"
    )
    log_level: str = "INFO"
    log_json: bool = True
    instance_id: str = Field(default="", description="defaults to host:pid")
