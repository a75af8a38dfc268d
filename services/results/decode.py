"""How the persister reads one record: well-formed chunks at C speed, the rest by the contract.

A chunk as a streamer writes it (only the fields of the contract, nothing escaped as
`\\u`, strict JSON types, RFC 3339 timestamps) is decoded by msgspec straight into the
row COPY takes. Anything else goes through `shared.contracts.parse_record`, which stays
the one judge of what is readable: the fast path accepts only a subset of what it
accepts, and reads it to the same row (tests/unit/test_results_decode.py holds both to
that), so whichever path a record takes, it is stored or dead-lettered the same way.
The one difference: digits of a second past the sixth, which no producer of ours
writes, are rounded here and cut there.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal, NamedTuple
from uuid import UUID

import msgspec

from services.results.projection import aware
from shared.contracts import LIFECYCLE_TYPES, LifecycleEvent, TokenChunk, parse_record
from shared.text import clean_json, clean_text

__all__ = ["ChunkRow", "StoredEvent", "UnexpectedType", "fast_chunk_row", "read_record"]

# The only way NUL or a lone surrogate can reach a string: a `\u` escape (the JSON parsers
# refuse them raw, and refuse invalid UTF-8). Records with any escape take the slow path.
_ESCAPE = b"\\u"
# Of those, the one the contract parser decodes: NUL, which PostgreSQL cannot store.
_NUL_ESCAPE = b"\\u0000"


class UnexpectedType(ValueError):
    """A readable record of a type the persister does not store."""


class ChunkRow(NamedTuple):
    """One row of `chunks`, its columns in table order (COPY takes it as it is)."""

    job_id: str
    attempt: int
    seq: int
    text: str
    tokens: int
    first_token_at: datetime
    emitted_at: datetime


class StoredEvent(NamedTuple):
    """A lifecycle event and, where the record's own text is valid jsonb, that text."""

    event: LifecycleEvent
    raw: str | None

    @property
    def job_id(self) -> str:
        return self.event.job_id


_Count = Annotated[int, msgspec.Meta(ge=0)]


class _ChunkData(msgspec.Struct, forbid_unknown_fields=True):
    attempt: int
    seq: _Count
    text: str
    tokens: _Count
    first_token_at: datetime
    emitted_at: datetime
    # Tool-call deltas are not stored per chunk (the completion carries the assembled
    # calls); left undecoded, they cost the fast path nothing.
    tool_calls: msgspec.Raw | None = None


class _Chunk(msgspec.Struct, forbid_unknown_fields=True):
    # Unknown fields (a newer producer's) are not refused: they send the record to the
    # contract parser, which ignores them as every consumer must.
    type: Literal["job.chunk"]
    job_id: str
    data: _ChunkData
    # Defaults stand in for what the row does not hold; null is refused, as the contract does.
    schema_version: int = 1
    event_id: UUID = UUID(int=0)
    occurred_at: datetime = datetime(1970, 1, 1, tzinfo=UTC)
    trace_id: str = ""


_CHUNK = msgspec.json.Decoder(_Chunk)


def fast_chunk_row(value: bytes) -> ChunkRow | None:
    """The chunk's row, or None where the contract parser must decide."""
    if _ESCAPE in value:
        return None
    try:
        chunk = _CHUNK.decode(value)
    except msgspec.DecodeError:  # msgspec.ValidationError included
        return None
    data = chunk.data
    return ChunkRow(
        chunk.job_id,
        data.attempt,
        data.seq,
        data.text,
        data.tokens,
        aware(data.first_token_at),
        aware(data.emitted_at),
    )


def _chunk_row(chunk: TokenChunk) -> ChunkRow:
    data = chunk.data
    return ChunkRow(
        clean_text(chunk.job_id),
        data.attempt,
        data.seq,
        clean_text(data.text),
        data.tokens,
        aware(data.first_token_at),
        aware(data.emitted_at),
    )


def _cleaned(event: LifecycleEvent) -> LifecycleEvent:
    """The same event with its NULs replaced (shared.text), so every column can hold it."""
    return type(event).model_validate(clean_json(event.model_dump()))


def read_record(value: bytes, *, chunk_expected: bool) -> StoredEvent | ChunkRow:
    """What the persister stores of `value`.

    `chunk_expected` (the record came from the chunks topic) only decides which reader is
    tried first. Raises `pydantic.ValidationError` for what the contract cannot read and
    `UnexpectedType` for a record of another type.
    """
    if chunk_expected:
        row = fast_chunk_row(value)
        if row is not None:
            return row
    parsed = parse_record(value)
    if isinstance(parsed, TokenChunk):
        return _chunk_row(parsed)
    if not isinstance(parsed, LIFECYCLE_TYPES):
        raise UnexpectedType(f"unexpected record type {parsed.type}")
    if _NUL_ESCAPE in value:
        return StoredEvent(_cleaned(parsed), None)
    if b"NaN" in value or b"Infinity" in value:
        # Tokens the contract parser reads but jsonb refuses (the test also catches them
        # inside text, which costs only the dump): the payload is dumped from the model.
        return StoredEvent(parsed, None)
    return StoredEvent(parsed, value.decode())
