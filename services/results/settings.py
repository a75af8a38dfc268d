"""The results service's settings, read from the environment (no prefix: field names are unique)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from shared.settings import CommonSettings
from shared.topics import GROUP_RESULTS


class ModelPrice(BaseModel):
    """USD per one million tokens."""

    model_config = ConfigDict(frozen=True)

    prompt: float = Field(ge=0)
    completion: float = Field(ge=0)


DEFAULT_PRICES: dict[str, ModelPrice] = {
    "gpt-4o-mini": ModelPrice(prompt=0.15, completion=0.60),
    "gpt-4o": ModelPrice(prompt=2.50, completion=10.00),
    "gpt-4.1": ModelPrice(prompt=2.00, completion=8.00),
    "gpt-4.1-mini": ModelPrice(prompt=0.40, completion=1.60),
}


class ResultsSettings(CommonSettings):
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    database_pool_size: int = Field(default=8, ge=2)
    results_port: int = Field(default=8081, ge=0, le=65535, description="HTTP; 0 = any")
    results_host: str = Field(
        default="127.0.0.1",
        description="bind address; the gateway is the public entry, so loopback by default",
    )
    results_group_id: str = GROUP_RESULTS
    results_batch_size: int = Field(
        default=10_000, ge=1, description="most records per transaction (and per fetch)"
    )
    results_batch_delay_ms: float = Field(
        default=50.0, ge=0, description="longest a record waits in the buffer"
    )
    results_session_timeout_ms: int = Field(default=10_000, ge=1000)
    results_heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    results_retry_base_s: float = Field(default=0.2, gt=0, description="first write backoff")
    results_retry_max_s: float = Field(default=5.0, gt=0, description="backoff cap")
    results_prices: dict[str, ModelPrice] = Field(
        default_factory=lambda: dict(DEFAULT_PRICES),
        description="per model, USD per 1M prompt/completion tokens (JSON in the environment)",
    )
    results_default_price: ModelPrice = ModelPrice(prompt=2.50, completion=10.00)
    results_max_page_bytes: int = Field(
        default=1_000_000,
        ge=1024,
        description="a list page stops early (with a next_cursor) once its items reach this size",
    )
    results_retention_days: float = Field(
        default=0, ge=0, description="null prompts/responses of jobs finished before; 0 = keep"
    )
    results_retention_interval_s: float = Field(default=3600.0, gt=0)

    def model_label(self, model: str | None) -> str:
        """A metric label for `model`: its price-table family, or `other` (bounded label set)."""
        if model:
            if model in self.results_prices:
                return model
            family = max(
                (m for m in self.results_prices if model.startswith(m + "-")),
                key=len,
                default=None,
            )
            if family is not None:
                return family
        return "other"

    def price_of(self, model: str | None) -> ModelPrice:
        """The price of `model`; a dated snapshot (`gpt-4o-2024-08-06`) costs as its family."""
        label = self.model_label(model)
        return self.results_prices.get(label, self.results_default_price)
