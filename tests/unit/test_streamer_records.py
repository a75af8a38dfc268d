"""Hot-path records, retry delays and upstream error mapping."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx2 as httpx
import openai
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from services.streamer.chunker import Chunk
from services.streamer.job import RetryPolicy
from services.streamer.records import ChunkEncoder
from services.streamer.upstream import (
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamServerError,
    UpstreamStreamCut,
    classify,
)
from shared.contracts import TokenChunk, TokenChunkData, parse_record
from shared.kafka import headers_for


def constructed_chunk(seq: int) -> TokenChunk:
    now = datetime.now(UTC)
    return TokenChunk.model_construct(
        job_id="job-1",
        trace_id="0" * 32,
        data=TokenChunkData.model_construct(
            attempt=2, seq=seq, text="hé llo", tokens=2, first_token_at=now, emitted_at=now
        ),
    )


def test_a_chunk_built_without_validation_serialises_to_a_valid_record() -> None:
    parsed = parse_record(constructed_chunk(3).to_bytes())
    assert isinstance(parsed, TokenChunk)
    assert (parsed.data.attempt, parsed.data.seq, parsed.data.text) == (2, 3, "hé llo")
    assert parsed.type == "job.chunk" and parsed.event_id is not None


# Epoch seconds from 1970 to 2200, with and without a fraction of a second.
epochs = st.one_of(
    st.floats(min_value=0, max_value=7_258_118_400, allow_nan=False),
    st.integers(min_value=0, max_value=7_258_118_400).map(float),
)


@settings(max_examples=200, deadline=None)
@given(
    job_id=st.text(min_size=1, max_size=40),
    trace_id=st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
    attempt=st.integers(min_value=1, max_value=2**31),
    seq=st.integers(min_value=0, max_value=2**40),
    text=st.text(max_size=60),
    tokens=st.integers(min_value=0, max_value=10_000),
    first=epochs,
    emitted=epochs,
)
def test_an_encoded_chunk_is_the_record_pydantic_would_write(
    job_id: str,
    trace_id: str,
    attempt: int,
    seq: int,
    text: str,
    tokens: int,
    first: float,
    emitted: float,
) -> None:
    encoded = ChunkEncoder(job_id, trace_id, attempt).encode(
        Chunk(seq, text, tokens, first, emitted)
    )
    parsed = parse_record(encoded)
    expected = TokenChunk(
        job_id=job_id,
        trace_id=trace_id,
        event_id=parsed.event_id,
        occurred_at=parsed.occurred_at,
        data=TokenChunkData(
            attempt=attempt,
            seq=seq,
            text=text,
            tokens=tokens,
            first_token_at=datetime.fromtimestamp(first, UTC),
            emitted_at=datetime.fromtimestamp(emitted, UTC),
        ),
    )
    assert parsed == expected
    # The same JSON as pydantic's, field for field and format for format, in its order.
    ours, theirs = orjson.loads(encoded), orjson.loads(expected.to_bytes())
    assert ours == theirs
    assert list(ours) == list(theirs) and list(ours["data"]) == list(theirs["data"])


def test_an_encoded_chunk_with_tool_call_deltas_is_the_record_pydantic_would_write() -> None:
    calls = [
        {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Par'},
        },
        {"index": 0, "id": None, "type": None, "function": {"name": None, "arguments": 'is"}'}},
    ]
    encoded = ChunkEncoder("job-1", "0" * 32, 1).encode(Chunk(4, "", 2, 1.5, 1.6, calls))
    parsed = parse_record(encoded)
    assert isinstance(parsed, TokenChunk) and parsed.data.tool_calls is not None
    assert [c.model_dump() for c in parsed.data.tool_calls] == calls
    ours, theirs = orjson.loads(encoded), orjson.loads(parsed.to_bytes())
    assert ours == theirs and list(ours["data"]) == list(theirs["data"])


def test_each_encoded_chunk_has_its_own_event_id_and_the_record_headers() -> None:
    encoder = ChunkEncoder("job-1", "0af7651916cd43dd8448eb211c80319c", 1)
    chunk = Chunk(0, "a", 1, 1.5, 1.5)
    first, second = (parse_record(encoder.encode(chunk)) for _ in range(2))
    assert first.event_id != second.event_id
    assert encoder.headers == headers_for(first)


def test_retry_delay_grows_is_bounded_and_honours_retry_after() -> None:
    policy = RetryPolicy(max_attempts=5, base_s=1.0, max_s=4.0)
    for attempt in range(1, 10):
        delay = policy.delay(attempt, None)
        assert 0 <= delay <= min(4.0, 2 ** (attempt - 1))
    assert policy.delay(1, 7.0) >= 7.0


def response(status: int, headers: dict[str, str] | None = None) -> httpx.Response:
    request = httpx.Request("POST", "http://sim/v1/chat/completions")
    return httpx.Response(status, headers=headers, request=request)


def test_sdk_errors_map_to_retriable_or_final_upstream_errors() -> None:
    limited = classify(
        openai.RateLimitError("slow down", response=response(429, {"retry-after": "2"}), body=None)
    )
    assert isinstance(limited, UpstreamRateLimited)
    assert limited.retriable and limited.retry_after == 2.0
    server = classify(openai.InternalServerError("boom", response=response(500), body=None))
    assert isinstance(server, UpstreamServerError) and server.retriable
    rejected = classify(openai.BadRequestError("bad", response=response(400), body=None))
    assert isinstance(rejected, UpstreamRejected) and not rejected.retriable
    cut = classify(openai.APIConnectionError(request=response(200).request))
    assert isinstance(cut, UpstreamStreamCut) and cut.retriable
