"""Hot-path records, retry delays and upstream error mapping."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx2 as httpx
import openai

from services.streamer.job import RetryPolicy
from services.streamer.upstream import (
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamServerError,
    UpstreamStreamCut,
    classify,
)
from shared.contracts import TokenChunk, TokenChunkData, parse_record


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
