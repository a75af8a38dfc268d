"""The upstream stream of one attempt, cut into chunks and published as tokens come."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from datetime import UTC, datetime
from typing import Any

from services.streamer.chunker import Chunk, Chunker
from services.streamer.job import CANCEL, Deps, Running
from services.streamer.streamed import Streamed, nothing_streamed, streamed_so_far
from services.streamer.upstream import (
    StreamEnd,
    UpstreamError,
    UpstreamModel,
    UpstreamServerError,
    UpstreamTimeout,
    UpstreamUsage,
    stream_tokens,
)
from shared.contracts import TokenChunk, TokenChunkData
from shared.kafka import headers_for
from shared.topics import chunks_topic

log = logging.getLogger(__name__)


def _ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class AttemptStream:
    """Reads the upstream in a child task and publishes coalesced chunks as tokens come."""

    def __init__(self, running: Running, deps: Deps, started: float) -> None:
        self.running = running
        self.deps = deps
        self.started = started
        self.chunker = Chunker(window_ms=deps.window_ms, max_tokens=deps.max_tokens)
        self.first_token_at: float | None = None
        self.model = running.job.data.config.model
        self.reported: UpstreamUsage | None = None
        self._sends: list[asyncio.Future[Any]] = []
        self._topic = chunks_topic(deps.prefix)
        self._key = running.job.job_id.encode()
        self._headers: list[tuple[str, bytes]] | None = None

    async def _read(self) -> None:
        queue = self.running.queue
        try:
            async for item in stream_tokens(self.deps.client, self.running.job.data):
                queue.put_nowait(item)
        except UpstreamError as exc:
            queue.put_nowait(exc)
        except Exception as exc:  # the transport may raise its own errors: a boundary
            log.exception("upstream stream broke")
            queue.put_nowait(UpstreamServerError(repr(exc)))

    async def run(self) -> StreamEnd | None:
        """The stream's end, or None when cancelled by the user; raises `UpstreamError`."""
        running = self.running
        if running.cancel is not None:
            return None
        running.reader = asyncio.create_task(self._read())
        queue = running.queue
        clock = self.deps.clock
        chunker = self.chunker
        idle_s = self.deps.idle_timeout_s
        job_deadline = self.started + self.deps.job_timeout_s
        idle_deadline = self.started + idle_s
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                flush_at = chunker.deadline() or math.inf
                wait = min(flush_at, idle_deadline, job_deadline) - clock()
                try:
                    async with asyncio.timeout(max(wait, 0.0)):
                        item = await queue.get()
                except TimeoutError:
                    now = clock()
                    chunk = chunker.due(now)
                    if chunk is not None:
                        await self._send(chunk)
                    if now >= job_deadline:
                        await self._flush()  # what was read counts as streamed
                        raise UpstreamTimeout("job timeout") from None
                    if now >= idle_deadline:
                        await self._flush()
                        raise UpstreamTimeout(f"no token for {idle_s:g} s") from None
                    continue
            if type(item) is str:
                now = clock()
                idle_deadline = now + idle_s
                if self.first_token_at is None:
                    self.first_token_at = now
                    self.deps.metrics.time_to_first_token.observe(now - self.started)
                chunk = chunker.add(item, now)
                if chunk is not None:
                    await self._send(chunk)
            elif isinstance(item, StreamEnd):
                await self._flush()
                return item
            elif item is CANCEL:
                await self._flush()
                return None
            elif isinstance(item, UpstreamModel):
                self.model = item.model
            elif isinstance(item, UpstreamUsage):
                self.reported = item
            else:
                await self._flush()
                raise item

    def streamed(self) -> Streamed:
        """What this attempt has streamed so far (published chunks), for a cut-short end."""
        if self.running.reader is None:  # cancelled before the upstream was asked
            return nothing_streamed(self.running.job.data)
        chunker = self.chunker
        return streamed_so_far(
            self.running.job.data,
            model=self.model,
            last_seq=chunker.last_seq,
            tokens=chunker.tokens,
            reported=self.reported,
        )

    async def _flush(self) -> None:
        chunk = self.chunker.flush(self.deps.clock())
        if chunk is not None:
            await self._send(chunk)

    async def _send(self, chunk: Chunk) -> None:
        # Hot path: no validation of our own fields; encode once.
        job = self.running.job
        record = TokenChunk.model_construct(
            job_id=job.job_id,
            trace_id=job.trace_id,
            data=TokenChunkData.model_construct(
                attempt=job.data.attempt,
                seq=chunk.seq,
                text=chunk.text,
                tokens=chunk.tokens,
                first_token_at=_ts(chunk.first_token_at),
                emitted_at=_ts(chunk.emitted_at),
            ),
        )
        if self._headers is None:
            self._headers = headers_for(record)
        future = await self.deps.producer.send(
            self._topic, record.to_bytes(), key=self._key, headers=self._headers
        )
        self._sends.append(future)
        # Counted per chunk, not per token: the per-token path stays minimal.
        self.deps.metrics.chunks.inc()
        self.deps.metrics.tokens.inc(chunk.tokens)

    async def drain(self) -> None:
        """Wait until the broker has every chunk: the final event must come after them."""
        if self._sends:
            await asyncio.gather(*self._sends)
            self._sends.clear()

    async def close(self) -> None:
        reader = self.running.reader
        if reader is not None and not reader.done():
            reader.cancel()
        if reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await reader
