"""In-process micro figures of the per-chunk hot path: build and encode one chunk record."""

from __future__ import annotations

import time

from services.streamer.chunker import Chunk
from services.streamer.records import ChunkEncoder
from tests.bench.figures import Figure


def chunk_encode_cost(n: int = 20_000) -> Figure:
    """What the streamer spends per chunk record before the producer sees it."""
    encoder = ChunkEncoder("job-1", "0" * 32, attempt=1)
    now = time.time()
    chunks = [Chunk(seq, " token", 1, now, now) for seq in range(n)]
    start = time.perf_counter()
    for chunk in chunks:
        encoder.encode(chunk)
    per_chunk = (time.perf_counter() - start) / n
    return Figure(
        "streamer: build + encode one chunk record",
        per_chunk * 1e6,
        "us",
        "<= 100",
        f"{n} records, the streamer's ChunkEncoder (orjson, no model object)",
    )


def measure() -> list[Figure]:
    return [chunk_encode_cost()]
