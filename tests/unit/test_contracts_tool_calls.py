"""Chunk and completion records grew by optional fields only: old and new consumers both read."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict

from shared.contracts import (
    JobCompleted,
    JobCompletedData,
    TokenChunk,
    TokenChunkData,
    TokenUsage,
    ToolCall,
    ToolCallDelta,
    ToolCallFunction,
    ToolCallFunctionDelta,
    parse_record,
)

NOW = datetime(2026, 12, 1, tzinfo=UTC)


class _Previous(BaseModel):
    model_config = ConfigDict(frozen=True)  # as the contracts' bodies: extra fields ignored


class PreviousChunkData(_Previous):
    """`TokenChunkData` as the previous schema version had it."""

    attempt: int
    seq: int
    text: str
    tokens: int
    first_token_at: datetime
    emitted_at: datetime


class PreviousCompletedData(_Previous):
    """`JobCompletedData` as the previous schema version had it."""

    attempt: int
    response: str
    finish_reason: str | None = None
    model: str
    usage: TokenUsage
    chunks: int
    last_seq: int
    time_to_first_token_ms: float | None = None
    duration_ms: float


class PreviousEnvelope(_Previous):
    type: str
    job_id: str
    data: dict[str, object]


def chunk_with_calls() -> TokenChunk:
    delta = ToolCallDelta(
        index=0, id="call_1", type="function", function=ToolCallFunctionDelta(name="f")
    )
    data = TokenChunkData(
        attempt=1, seq=0, text="", tokens=1, first_token_at=NOW, emitted_at=NOW, tool_calls=[delta]
    )
    return TokenChunk(job_id="job-1", data=data)


def completed_with_calls() -> JobCompleted:
    call = ToolCall(id="call_1", function=ToolCallFunction(name="f", arguments="{}"))
    data = JobCompletedData(
        attempt=1,
        response="",
        finish_reason="tool_calls",
        model="m",
        usage=TokenUsage(prompt_tokens=3, completion_tokens=2, total_tokens=5),
        chunks=1,
        last_seq=0,
        duration_ms=1.0,
        tool_calls=[call],
        usage_estimated=True,
    )
    return JobCompleted(job_id="job-1", data=data)


def test_a_previous_consumer_reads_new_chunk_and_completion_records() -> None:
    chunk = PreviousEnvelope.model_validate_json(chunk_with_calls().to_bytes())
    assert PreviousChunkData.model_validate(chunk.data).text == ""
    done = PreviousEnvelope.model_validate_json(completed_with_calls().to_bytes())
    assert PreviousCompletedData.model_validate(done.data).usage.total_tokens == 5


def test_a_new_consumer_reads_previous_records_without_the_new_fields() -> None:
    chunk = chunk_with_calls().model_dump(mode="json")
    del chunk["data"]["tool_calls"]
    parsed = parse_record(json.dumps(chunk).encode())
    assert isinstance(parsed, TokenChunk) and parsed.data.tool_calls is None
    done = completed_with_calls().model_dump(mode="json")
    del done["data"]["tool_calls"], done["data"]["usage_estimated"]
    old = parse_record(json.dumps(done).encode())
    assert isinstance(old, JobCompleted)
    assert old.data.tool_calls is None and old.data.usage_estimated is False
