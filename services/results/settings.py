"""The results service's settings, read from the environment (no prefix: field names are unique)."""

from __future__ import annotations

from pydantic import Field

from shared.settings import CommonSettings
from shared.topics import GROUP_RESULTS
from shared.webhooks import DEFAULT_SCHEDULE_S, DEFAULT_WINDOW_S, WebhookSettings


class ResultsSettings(CommonSettings, WebhookSettings):
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
    results_fetch_max_wait_ms: int = Field(
        default=25,
        ge=0,
        description="how long the broker may hold a fetch of the persister and the webhook"
        " planner for RESULTS_FETCH_MIN_BYTES to arrive: fewer, fuller fetches at a moderate"
        " rate, each record at most this much later; an idle consumer fetches this often",
    )
    results_fetch_min_bytes: int = Field(
        default=1024 * 1024,
        ge=1,
        description="bytes the broker waits for before it answers those fetches; 1: each"
        " record as soon as it is appended",
    )
    results_session_timeout_ms: int = Field(default=10_000, ge=1000)
    results_heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    results_retry_base_s: float = Field(default=0.2, gt=0, description="first write backoff")
    results_retry_max_s: float = Field(default=5.0, gt=0, description="backoff cap")
    results_max_page_bytes: int = Field(
        default=1_000_000,
        ge=1024,
        description="a list page stops early (with a next_cursor) once its items reach this size",
    )
    results_retention_days: float = Field(
        default=0, ge=0, description="null prompts/responses of jobs finished before; 0 = keep"
    )
    results_retention_interval_s: float = Field(default=3600.0, gt=0)
    results_instance_stale_periods: float = Field(
        default=3.0, gt=1, description="a streamer is shown gone after this many silent periods"
    )
    webhook_schedule_s: str = Field(
        default=",".join(f"{d:g}" for d in DEFAULT_SCHEDULE_S),
        description="seconds before each next try of a failed webhook delivery, comma"
        " separated; the last repeats",
    )
    webhook_window_s: float = Field(
        default=DEFAULT_WINDOW_S, gt=0, description="no try later than this after the first"
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0, description="one POST, answer included")
    webhook_max_pending: int = Field(
        default=10_000, ge=1, description="deliveries held waiting for their time, per instance"
    )
