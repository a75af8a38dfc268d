"""In-process micro figures of the per-chunk hot path: build and encode one chunk record."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from shared.contracts import TokenChunk, TokenChunkData
from tests.bench.figures import Figure


def chunk_encode_cost(n: int = 20_000) -> Figure:
    """What the streamer spends per chunk record before the producer sees it."""
    now = datetime.now(UTC)
    start = time.perf_counter()
    for seq in range(n):
        TokenChunk.model_construct(
            job_id="job-1",
            trace_id="0" * 32,
            data=TokenChunkData.model_construct(
                attempt=1, seq=seq, text=" token", tokens=1, first_token_at=now, emitted_at=now
            ),
        ).to_bytes()
    per_chunk = (time.perf_counter() - start) / n
    return Figure(
        "streamer: build + encode one chunk record",
        per_chunk * 1e6,
        "us",
        "<= 100",
        f"{n} records, model_construct + model_dump_json",
    )


def measure() -> list[Figure]:
    return [chunk_encode_cost()]
