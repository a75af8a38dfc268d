"""Chunk records encoded on the hot path: orjson of a plain dict, no pydantic per chunk.

The bytes are those `TokenChunk.model_dump_json` gives (same fields, order and formats:
UUID as text, datetimes as RFC 3339 in UTC with `Z`); the unit tests read them back
through the pydantic model.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson

from services.streamer.chunker import Chunk
from shared.contracts import TokenChunk
from shared.kafka import Headers, traceparent
from shared.topics import HEADER_SCHEMA_VERSION, HEADER_TRACEPARENT, HEADER_TYPE

CHUNK_TYPE: str = TokenChunk.model_fields["type"].default
SCHEMA_VERSION: int = TokenChunk.model_fields["schema_version"].default
_OPTIONS = orjson.OPT_UTC_Z


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class ChunkEncoder:
    """The chunk records of one attempt: its constant fields and headers are built once."""

    __slots__ = ("attempt", "headers", "job_id", "trace_id")

    def __init__(self, job_id: str, trace_id: str, attempt: int) -> None:
        self.job_id = job_id
        self.trace_id = trace_id
        self.attempt = attempt
        self.headers: Headers = [
            (HEADER_TYPE, CHUNK_TYPE.encode()),
            (HEADER_SCHEMA_VERSION, str(SCHEMA_VERSION).encode()),
            (HEADER_TRACEPARENT, traceparent(trace_id)),
        ]

    def encode(self, chunk: Chunk) -> bytes:
        return orjson.dumps(
            {
                "type": CHUNK_TYPE,
                "schema_version": SCHEMA_VERSION,
                "event_id": uuid.uuid4(),
                "job_id": self.job_id,
                "occurred_at": datetime.now(UTC),
                "trace_id": self.trace_id,
                "data": {
                    "attempt": self.attempt,
                    "seq": chunk.seq,
                    "text": chunk.text,
                    "tokens": chunk.tokens,
                    "first_token_at": _ts(chunk.first_token_at),
                    "emitted_at": _ts(chunk.emitted_at),
                    "tool_calls": chunk.tool_calls,
                },
            },
            option=_OPTIONS,
        )
