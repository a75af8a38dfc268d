"""The envelope every Kafka record travels in: type, version, ids, time, trace, typed body."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field


def new_trace_id() -> str:
    """A W3C trace id: 32 lowercase hex digits."""
    return secrets.token_hex(16)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel):
    """Fields common to every record; subclasses fix `type` and the `data` body.

    Consumers must ignore fields they do not know: schemas only grow by
    optional fields, and a breaking change is a new `type` or `schema_version`.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: str
    schema_version: int = 1
    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    job_id: str
    occurred_at: datetime = Field(default_factory=utcnow)
    trace_id: str = Field(default_factory=new_trace_id, description="W3C trace id")

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()
