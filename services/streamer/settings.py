"""The streamer's settings, read from the environment (no prefix: field names are unique)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr

from services.streamer.channels import JOB_GROUP, RETRY_GROUP
from shared.kafka import DEFAULT_LINGER_MS
from shared.settings import CommonSettings


class StreamerSettings(CommonSettings):
    openai_base_url: str = "http://127.0.0.1:8090/v1"
    openai_api_key: SecretStr = SecretStr("sim")
    streamer_port: int = Field(default=8083, ge=0, le=65535, description="ops HTTP; 0 = any")
    streamer_host: str = "0.0.0.0"
    streamer_slots: int = Field(default=64, ge=1, description="jobs streamed at once")
    streamer_instance_heartbeat_s: float = Field(
        default=5.0, gt=0, description="how often this instance's heartbeat goes to the board"
    )
    streamer_aging_s: float = Field(
        default=30.0, ge=0, description="a job waiting this long counts one band higher; 0 = off"
    )
    streamer_prefetch: int = Field(
        default=0, ge=0, description="jobs held per band before its partitions pause; 0 = slots"
    )
    streamer_chunk_window_ms: float = Field(default=30.0, ge=0)
    streamer_chunk_max_tokens: int = Field(default=16, ge=1)
    streamer_job_timeout_s: float = Field(default=600.0, gt=0)
    streamer_idle_timeout_s: float = Field(default=30.0, gt=0)
    streamer_group_id: str = JOB_GROUP
    streamer_retry_group_id: str = RETRY_GROUP
    streamer_sticky_assignment: bool = Field(
        default=False,
        description="sticky partition assignment: a rebalance reruns only the jobs of moved"
        " partitions; off (round robin: every running job is cut) until a job submitted"
        " while the assignment settles is taken at once",
    )
    streamer_session_timeout_ms: int = Field(default=10_000, ge=1000)
    streamer_heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    streamer_cancel_ttl_s: float = Field(
        default=3600.0, gt=0, description="how long a cancel of a job not fetched yet is kept"
    )
    streamer_max_remembered_cancels: int = Field(
        default=10_000,
        ge=1,
        # The older name still configures it.
        validation_alias=AliasChoices(
            "streamer_max_remembered_cancels", "streamer_cancel_capacity"
        ),
        description="cancels of jobs not fetched yet kept at most, in all; oldest evicted first",
    )
    streamer_max_known_owners: int = Field(
        default=100_000,
        ge=1,
        description="job ids whose first-seen owner is remembered to authorise their cancels",
    )
    streamer_max_not_before_s: float = Field(
        default=3600.0,
        gt=0,
        description="a job record due later than this from now is rejected, not held",
    )
    streamer_accept_skew_s: float = Field(
        default=1.0,
        ge=0,
        description="a first attempt appended this long after its accept_by is not run"
        " (margin for the gateway's clock against the broker's)",
    )
    streamer_use_aiohttp_client: bool = Field(
        default=True, description="openai.DefaultAioHttpClient when available: faster at scale"
    )
    streamer_grace_s: float = Field(
        default=20.0, ge=0, description="on stop, how long running jobs may finish"
    )
    streamer_claims_margin_s: float = Field(
        default=60.0,
        ge=0,
        description="on assignment, claims are read from the events of this long before the"
        " oldest uncommitted job record (margin for streamer clocks against the broker's)",
    )
    streamer_claims_timeout_s: float = Field(
        default=30.0, gt=0, description="one try at reading the claims on an assignment"
    )
    streamer_max_attempts: int = Field(default=4, ge=1)
    streamer_preempt: Literal["off", "high", "normal", "low"] = Field(
        default="low",
        description="an urgent job waiting while every slot is busy stops the youngest running"
        " job of this band or a lower one (lowest first); it runs again as its next attempt."
        " 'off': urgent jobs wait for a slot to free",
    )
    streamer_retry_base_s: float = Field(default=0.5, ge=0, description="first backoff bound")
    streamer_retry_max_s: float = Field(default=30.0, ge=0)
    streamer_breaker_failures: int = Field(
        default=5, ge=1, description="consecutive upstream failures that open the breaker"
    )
    streamer_breaker_cooldown_s: float = Field(default=10.0, gt=0)
    streamer_lag_interval_s: float = Field(
        default=5.0, gt=0, description="how often consumer lag is measured for /metrics"
    )
    streamer_kafka_linger_ms: int = Field(
        default=DEFAULT_LINGER_MS,
        ge=0,
        description="producer linger of the chunk and event records; 0 sends at once (records"
        " sent while a request is in flight still travel together)",
    )
    streamer_fetch_max_wait_ms: int = Field(
        default=50,
        ge=0,
        description="how long an intake fetch waits on the broker for new jobs; a burst"
        " committed while the fetch is parked waits for this at most",
    )
    streamer_max_loop_lag_ms: float = Field(
        default=50.0,
        ge=0,
        description="no new job starts while the p99 loop lag of the last window is over"
        " this (urgent ones only replace finished ones); 0 = off",
    )
    streamer_resume_loop_lag_ms: float = Field(
        default=25.0,
        ge=0,
        description="an overloaded streamer takes jobs again once the window's p99 loop lag"
        " is at or under this, or every sample of the recovery time was",
    )
    streamer_loop_lag_recover_ms: float = Field(
        default=200.0,
        ge=0,
        description="how long the loop lag stays at or under the resume bound before an"
        " overloaded streamer takes jobs again, however recent its spikes",
    )
    streamer_loop_lag_interval_ms: float = Field(
        default=10.0, gt=0, description="how often the loop lag is sampled"
    )
    streamer_loop_lag_window_s: float = Field(
        default=1.0, gt=0, description="the loop lag samples admission looks at"
    )
