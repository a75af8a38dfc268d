"""The notifier's settings, read from the environment (no prefix: field names are unique)."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator

from shared.kafka import DEFAULT_FETCH_MAX_WAIT_MS, DEFAULT_FETCH_MIN_BYTES
from shared.settings import CommonSettings


def _url_list(raw: str) -> list[str]:
    return [url.strip() for url in raw.split(",")] if raw.strip() else []


class NotifierSettings(CommonSettings):
    notifier_host: str = Field(
        default="127.0.0.1",
        description="address both ports bind: loopback unless set; the gateway is the public entry",
    )
    notifier_port: int = Field(
        default=8082, ge=0, le=65535, description="WebSocket /ws and ops HTTP; 0 = any"
    )
    notifier_sse_port: int = Field(default=8084, ge=0, le=65535, description="SSE; 0 = any")
    notifier_queue_frames: int = Field(
        default=1024, ge=1, description="live frames queued per connection before a resync"
    )
    notifier_max_resyncs: int = Field(
        default=3, ge=1, description="resyncs a connection may need before it is closed (4008)"
    )
    notifier_slow_consumer_s: float = Field(
        default=30.0, gt=0, description="a send blocked this long closes the connection (4008)"
    )
    notifier_job_ttl_s: float = Field(
        default=300.0, gt=0, description="how long a finished job stays resumable"
    )
    notifier_max_jobs: int = Field(default=50_000, ge=1, description="jobs tracked at most")
    notifier_lookback_s: float = Field(
        default=900.0, ge=0, description="on start, replay this much history before ready"
    )
    notifier_rebuild_timeout_s: float = Field(default=120.0, gt=0)
    notifier_max_subscriptions: int = Field(default=100, ge=1, description="per connection")
    notifier_auth_timeout_s: float = Field(
        default=10.0, gt=0, description="the auth message must come within this time"
    )
    notifier_pending_subscribe_s: float = Field(
        default=5.0,
        gt=0,
        description="how long a subscription to a job not seen yet waits for its job.accepted",
    )
    notifier_final_wait_s: float = Field(
        default=5.0, gt=0, description="how long a final event waits for its last chunks"
    )
    notifier_ping_interval_s: float = Field(default=20.0, gt=0)
    notifier_ping_timeout_s: float = Field(default=20.0, gt=0)
    notifier_max_message_bytes: int = Field(
        default=65_536, ge=1024, description="largest client message; bigger closes 1009"
    )
    notifier_max_connections: int = Field(
        default=25_000,
        ge=1,
        description="open WebSocket + SSE connections per process, not yet authenticated included",
    )
    notifier_max_connections_per_user: int = Field(
        default=500, ge=1, description="open WebSocket + SSE connections of one user"
    )
    notifier_max_owners: int = Field(
        default=500_000,
        ge=1,
        description="jobs whose owner is remembered beyond the lookback window (~240 B each)",
    )
    notifier_instance: int = Field(
        default=0, ge=0, description="this instance's index (0-based) among NOTIFIER_INSTANCES"
    )
    notifier_instances: int = Field(
        default=1,
        ge=1,
        description="notifier instances sharing the chunk partitions; every one must be restarted"
        " with the same count when it changes",
    )
    notifier_fetch_max_wait_ms: int = Field(
        default=DEFAULT_FETCH_MAX_WAIT_MS,
        ge=0,
        description="how long the broker may hold the chunk and event fetch while nothing is"
        " appended; it answers at once when a record is (see NOTIFIER_FETCH_MIN_BYTES)",
    )
    notifier_fetch_min_bytes: int = Field(
        default=DEFAULT_FETCH_MIN_BYTES,
        ge=1,
        description="bytes the broker waits for before it answers that fetch; 1: each record"
        " as soon as it is appended",
    )
    notifier_public_ws_urls: str = Field(
        default="",
        description="comma-separated; entry i is instance i's public WebSocket URL (redirects)",
    )
    notifier_public_sse_urls: str = Field(
        default="",
        description="comma-separated; entry i is instance i's public SSE base URL (307s)",
    )

    @model_validator(mode="after")
    def _instance_in_range(self) -> Self:
        if self.notifier_instance >= self.notifier_instances:
            raise ValueError(
                f"NOTIFIER_INSTANCE={self.notifier_instance} is not below"
                f" NOTIFIER_INSTANCES={self.notifier_instances}"
            )
        return self

    @property
    def public_ws_urls(self) -> list[str]:
        return _url_list(self.notifier_public_ws_urls)

    @property
    def public_sse_urls(self) -> list[str]:
        return _url_list(self.notifier_public_sse_urls)
