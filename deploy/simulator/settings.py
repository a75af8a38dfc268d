"""The simulator's settings, read from `SIM_*` environment variables (pydantic-settings)."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from deploy.simulator.dialects import DIALECTS

DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1")


class SimulatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIM_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=0, le=65535, description="0 picks a free port")
    ttft_ms: float = Field(default=50.0, ge=0, description="time to first token")
    tokens_per_second: float = Field(default=200.0, ge=0, description="0: as fast as possible")
    completion_tokens: int = Field(
        default=64, ge=0, description="completion length, unless max_tokens is lower"
    )
    error_rate: float = Field(default=0.0, ge=0, le=1, description="fraction answered 500")
    rate_limit_rate: float = Field(default=0.0, ge=0, le=1, description="fraction answered 429")
    drop_rate: float = Field(
        default=0.0, ge=0, le=1, description="fraction of streams cut mid-way without [DONE]"
    )
    retry_after: float = Field(default=1.0, ge=0, description="seconds, in 429/503 answers")
    seed: int = Field(default=0, description="mixed into every completion's seed and the faults")
    models: tuple[str, ...] = Field(default=DEFAULT_MODELS, description="listed by /v1/models")
    keep_requests: int = Field(
        default=200, ge=0, description="request bodies kept for `GET /_sim/requests`; 0 = none"
    )
    backlog: int = Field(default=2048, ge=1, description="listen backlog: many streams connect")
    shutdown_timeout_s: float = Field(
        default=5.0, ge=0, description="how long open streams may finish on SIGTERM"
    )
    dialect: str = Field(
        default="openai",
        description="the server dialect of /v1 (deploy/simulator/dialects.py); "
        "/dialects/<name>/v1 picks one per request",
    )
    log_level: str = "INFO"
    log_json: bool = True

    @model_validator(mode="after")
    def _rates_fit(self) -> SimulatorSettings:
        if self.error_rate + self.rate_limit_rate > 1:
            raise ValueError("error_rate + rate_limit_rate must not exceed 1")
        if self.dialect not in DIALECTS:
            raise ValueError(f"dialect {self.dialect!r}: use one of {sorted(DIALECTS)}")
        return self
