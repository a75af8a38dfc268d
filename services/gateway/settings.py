"""The gateway's settings, read from the environment (no prefix: field names are unique)."""

from __future__ import annotations

import socket

from pydantic import Field

from services.gateway.admission_records import reply_partition
from services.gateway.storable import ENVELOPE_LEVELS, PARSER_DEPTH_LIMIT
from shared.settings import CommonSettings
from shared.webhooks import WebhookSettings


class GatewaySettings(CommonSettings, WebhookSettings):
    gateway_port: int = Field(default=8080, ge=0, le=65535, description="REST + ops; 0 = any")
    gateway_host: str = "0.0.0.0"
    results_url: str = Field(
        default="http://127.0.0.1:8081", description="base URL of the results service (reads)"
    )
    results_timeout_s: float = Field(default=10.0, gt=0, description="bound of one forwarded read")
    gateway_public_url: str = Field(
        default="", description="base URL for links in answers; empty = relative links"
    )
    gateway_public_ws_url: str = Field(
        default="", description="the notifier's WebSocket URL for links; empty = no link"
    )
    notifier_sse_url: str = Field(
        default="",
        description="the notifier's SSE base URL; when set, /api/v1/jobs/{id}/events is proxied",
    )
    gateway_notifier_ws_urls: str = Field(
        default="",
        description="comma list, entry i = notifier instance i's WebSocket URL; a job's link"
        " names the instance serving its chunk partition; empty = GATEWAY_PUBLIC_WS_URL",
    )
    gateway_notifier_sse_urls: str = Field(
        default="",
        description="comma list, entry i = notifier instance i's SSE base URL; the proxy of"
        " /api/v1/jobs/{id}/events goes to the job's instance; empty = NOTIFIER_SSE_URL",
    )
    gateway_instance_id: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        description="names this instance (decision replies, logs); stable per instance",
    )
    gateway_admission_partitions: int = Field(
        default=8,
        ge=1,
        description="partitions of the admission and decisions topics: the most gateways"
        " that share the deciding",
    )
    gateway_admission_rebuild_s: float = Field(
        default=900.0,
        ge=0,
        description="a new owner of an admission partition replays this much of its decisions"
        " log; keep it past the rate window (60 s) and the events view's lag",
    )
    gateway_admission_session_timeout_ms: int = Field(
        default=10_000,
        ge=1_000,
        description="how long a silent owner keeps its admission partitions before they move",
    )
    gateway_admission_batch: int = Field(
        default=500, ge=1, description="admission requests decided in one transaction at most"
    )
    gateway_admission_max_transactions: int = Field(
        default=0,
        ge=0,
        description="admission transactions an owner has open at once over all its"
        " partitions; past it requests wait and join the next, fuller one (less broker"
        " work, but a partition whose leader is down holds a slot); 0 = one per partition",
    )
    gateway_admission_linger_ms: int = Field(
        default=0,
        ge=0,
        le=100,
        description="how long an admission request waits to share its produce request; while"
        " one is in flight the next requests batch up anyway",
    )
    gateway_max_prompt_chars: int = Field(
        default=32_000, ge=1, description="a prompt's characters, or all text of a messages job"
    )
    gateway_max_messages: int = Field(
        default=256, ge=1, description="messages of one messages job at most"
    )
    gateway_max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    gateway_max_target_bytes: int = Field(
        default=4096,
        ge=256,
        le=8000,
        description="request line target (path and query) at most; longer answers 414",
    )
    gateway_max_json_depth: int = Field(
        default=32,
        ge=2,
        le=PARSER_DEPTH_LIMIT - ENVELOPE_LEVELS - 64,
        description="nesting levels of a submission's JSON (the body object is 1); kept far"
        " below what the envelope, pydantic, json and jsonb accept downstream",
    )
    gateway_submissions_per_minute: int = Field(
        default=60, ge=0, description="per user, across every gateway instance; 0 = off"
    )
    gateway_max_in_flight: int = Field(
        default=20, ge=0, description="jobs accepted and not final, per user; 0 = off"
    )
    gateway_idempotency_window_s: float = Field(
        default=24 * 3600.0, gt=0, description="how long an Idempotency-Key names the same job"
    )
    gateway_idempotency_max_keys: int = Field(
        default=2_000_000,
        ge=1,
        description="Idempotency-Keys held within the window (about 150 bytes each); when"
        " full, new keyed submissions answer 503 rather than an old key being forgotten",
    )
    gateway_events_lookback_s: float = Field(
        default=24 * 3600.0,
        ge=0,
        description="how far back the events view reads on start; cover the idempotency window",
    )
    gateway_view_max_jobs: int = Field(
        default=200_000,
        ge=1,
        description="jobs the events view holds in full at most (limits, ownership);"
        " Idempotency-Keys are held apart, by time",
    )
    gateway_view_final_retention_s: float = Field(
        default=600.0, ge=0, description="how long a final job without an idempotency key is kept"
    )
    gateway_view_catchup_timeout_s: float = Field(
        default=60.0, gt=0, description="on start, how long to wait for the view to catch up"
    )
    gateway_publish_timeout_s: float = Field(default=10.0, gt=0)
    gateway_in_flight_retry_after_s: int = Field(
        default=5, ge=1, description="Retry-After of a 429 for too many jobs in flight"
    )
    gateway_cancels_per_minute: int = Field(
        default=60, ge=0, description="cancel requests per user per minute, per instance; 0 = off"
    )
    gateway_max_background_publishes: int = Field(
        default=10_000,
        ge=1,
        description="voids of jobs accepted after their 503, retried in the background;"
        " past it submissions answer 503",
    )
    gateway_sse_max_streams: int = Field(
        default=1_000, ge=1, description="proxied SSE streams open at once (the pool's bound)"
    )
    gateway_sse_max_streams_per_user: int = Field(
        default=8, ge=1, description="proxied SSE streams one user may hold open; past it 429"
    )
    gateway_sse_wait_s: float = Field(
        default=2.0, gt=0, description="how long a new SSE stream waits for a free slot; then 503"
    )
    gateway_openai_wait_s: float = Field(
        default=600.0,
        gt=0,
        description="how long POST /v1/chat/completions without stream waits for the answer;"
        " then 504 (the job runs on: GET /v1/chat/completions/{id})",
    )
    gateway_openai_job_type: str = Field(
        default="chat",
        min_length=1,
        description="the job type of a /v1/chat/completions request that names none"
        " (`chat` sends the messages as given)",
    )

    @property
    def gateway_reply_partition(self) -> int:
        """The partition of the replies topic this instance reads (from its instance id)."""
        return reply_partition(self.gateway_instance_id, self.gateway_admission_partitions)

    @property
    def notifier_ws_urls(self) -> list[str]:
        return _url_list(self.gateway_notifier_ws_urls, self.gateway_public_ws_url)

    @property
    def notifier_sse_urls(self) -> list[str]:
        return _url_list(self.gateway_notifier_sse_urls, self.notifier_sse_url)


def _url_list(urls: str, single: str) -> list[str]:
    """Entry i is notifier instance i; the older one-URL setting is a one-entry list."""
    listed = [u.strip() for u in urls.split(",") if u.strip()]
    return listed or ([single] if single else [])
