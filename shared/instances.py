"""Streamer heartbeats: the value of a record on the compacted instances topic.

Each streamer publishes one every few seconds, keyed by its instance id, and a tombstone
(null value) when it stops cleanly; a reader keeps the latest per key.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class StreamerHeartbeat(BaseModel):
    """One streamer's state as it last told it; a plain record, not an envelope."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    instance_id: str
    host: str
    pid: int
    slots_total: int = Field(ge=0)
    slots_in_use: int = Field(ge=0)
    jobs_running: int = Field(ge=0)
    jobs_waiting: int = Field(default=0, ge=0, description="fetched, waiting for a slot")
    partitions: list[str] = Field(default_factory=list, description="topic:partition assigned")
    loop_lag_ms: float = Field(ge=0, description="event-loop lag p99 over the recent window")
    overloaded: bool = False
    started_at: datetime
    sent_at: datetime
    interval_s: float = Field(gt=0, description="the period of these heartbeats")
