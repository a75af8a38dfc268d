"""The upstream stream of one attempt, cut into chunks and published as tokens come."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from collections import deque
from typing import Any

import openai

from services.streamer.chunker import Chunk, Chunker
from services.streamer.continuation import continuation_request_for
from services.streamer.job import Deps, Running
from services.streamer.records import ChunkEncoder
from services.streamer.sse import ToolCallDeltas
from services.streamer.streamed import (
    Streamed,
    estimate_prompt_tokens,
    nothing_streamed,
    streamed_so_far,
)
from services.streamer.upstream import (
    StreamEnd,
    UpstreamError,
    UpstreamModel,
    UpstreamServerError,
    UpstreamTimeout,
    UpstreamUsage,
    stream_tokens,
)
from shared.contracts import ResumeFrom, RunJobData
from shared.routing import chunk_partition
from shared.topics import chunks_topic

log = logging.getLogger(__name__)


class AttemptStream:
    """Reads the upstream into the chunker in one task; publishes the chunks as they are cut.

    The reader task parses each token and feeds the chunker: no queue between them. This
    coroutine (`run`) is the attempt's clock and its only publisher: it sends every chunk
    in seq order, flushes a chunk whose window passed while no token came, and ends the
    attempt on the job and idle timeouts. A cancel cancels the reader, which closes the
    upstream HTTP stream at once.
    """

    def __init__(
        self,
        running: Running,
        deps: Deps,
        started: float,
        client: openai.AsyncOpenAI,
        asked: RunJobData | None = None,
        *,
        after: asyncio.Future[Any] | None = None,
    ) -> None:
        self.running = running
        self.deps = deps
        self.started = started
        self.client = client
        data = running.job.data
        # The job as this hop asks it (its model); a continuing attempt's chunks carry on
        # the stream of the attempt it continues, under that attempt's number and seqs.
        self.asked = asked if asked is not None else data
        self.resume = data.resume
        self._body = (
            continuation_request_for(self.asked, data.resume, deps.job_types)
            if data.resume is not None
            else None
        )
        self.chunker = Chunker(
            window_ms=deps.window_ms,
            max_tokens=deps.max_tokens,
            start_seq=data.resume.next_seq if data.resume is not None else 0,
        )
        self.first_token_at: float | None = None
        self.last_token_at = started
        self.model = self.asked.config.model
        self.reported: UpstreamUsage | None = None
        # `after`: a record sent before this attempt (its JobStarted) that the broker must
        # have before the first chunk is sent; `drain` waits for it with the chunks.
        self._after = after
        self._sends: list[asyncio.Future[Any]] = [after] if after is not None else []
        self._topic = chunks_topic(deps.prefix)
        self._key = running.job.job_id.encode()
        self._partition: int | None = None
        self._encoder = ChunkEncoder(
            running.job.job_id,
            running.job.trace_id,
            data.resume.attempt if data.resume is not None else data.attempt,
        )
        # Chunks cut but not sent yet, in seq order: whoever cuts one appends it at once.
        self._ready: deque[Chunk] = deque()
        self._wake: asyncio.Future[None] | None = None
        self._timer: asyncio.Timeout | None = None

    def _wake_up(self, _: object = None) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _read(self) -> StreamEnd:
        chunker = self.chunker
        clock = self.deps.clock
        ready = self._ready
        window_s = self.deps.window_ms / 1000.0
        try:
            async for item in stream_tokens(
                self.client, self.asked, self.deps.job_types, self._body
            ):
                if type(item) is str:
                    now = clock()
                    self.last_token_at = now
                    if self.first_token_at is None:
                        self.first_token_at = now
                        self.deps.metrics.time_to_first_token.observe(now - self.started)
                    chunk = chunker.add(item, now)
                    if chunk is not None:
                        ready.append(chunk)
                        self._wake_up()
                    elif chunker.pending == 1:
                        self._window_opened(window_s)
                elif type(item) is ToolCallDeltas:
                    self._tool_calls(item, clock())
                elif isinstance(item, StreamEnd):
                    return self._counted(item)
                elif isinstance(item, UpstreamModel):
                    self.model = item.model
                elif isinstance(item, UpstreamUsage):
                    self.reported = item
        except UpstreamError:
            raise
        except Exception as exc:  # the transport may raise its own errors: a boundary
            log.exception("upstream stream broke")
            raise UpstreamServerError(repr(exc)) from exc
        raise UpstreamServerError("the upstream stream ended without its end")

    def _tool_calls(self, item: ToolCallDeltas, now: float) -> None:
        """One event's tool-call deltas: a token like a content delta, in the same chunks."""
        self.last_token_at = now
        if self.first_token_at is None:
            self.first_token_at = now
            self.deps.metrics.time_to_first_token.observe(now - self.started)
        chunk = self.chunker.add_tool_calls(item.deltas, now)
        if chunk is not None:
            self._ready.append(chunk)
            self._wake_up()
        elif self.chunker.pending == 1:
            self._window_opened(self.deps.window_ms / 1000.0)

    @property
    def usage_estimated(self) -> bool:
        """The upstream reported no usage: the stream's end counts it (`_counted`)."""
        return self.reported is None

    def _counted(self, end: StreamEnd) -> StreamEnd:
        """A stream without usage (some servers never send it): its completion tokens are
        the deltas counted, its prompt tokens estimated from the request."""
        if self.reported is not None:
            return end
        prompt = estimate_prompt_tokens(self.running.job.data, self.deps.job_types)
        return dataclasses.replace(
            end, prompt_tokens=prompt, total_tokens=prompt + end.completion_tokens
        )

    def _window_opened(self, window_s: float) -> None:
        """A token now waits for its window: the clock must wake by then (once per chunk)."""
        timer = self._timer
        if timer is None or timer.expired():
            return  # the clock is awake already and reads the window when it sleeps again
        when = asyncio.get_running_loop().time() + window_s
        current = timer.when()
        if current is None or when < current:
            timer.reschedule(when)

    async def run(self) -> StreamEnd | None:
        """The stream's end, or None when cancelled by the user or preempted; raises
        `UpstreamError`."""
        running = self.running
        if running.cancel is not None or running.preempted:
            return None
        loop = asyncio.get_running_loop()
        reader = asyncio.create_task(self._read())
        running.reader = reader
        reader.add_done_callback(self._wake_up)
        clock = self.deps.clock
        chunker = self.chunker
        idle_s = self.deps.idle_timeout_s
        job_deadline = self.started + self.deps.job_timeout_s
        while True:
            await self._send_ready()
            if reader.done():
                break
            now = clock()
            idle_deadline = self.last_token_at + idle_s
            deadline = min(chunker.deadline() or math.inf, idle_deadline, job_deadline)
            self._wake = loop.create_future()
            try:
                async with asyncio.timeout_at(loop.time() + max(deadline - now, 0.0)) as timer:
                    self._timer = timer
                    await self._wake
            except TimeoutError:
                now = clock()
                chunk = chunker.due(now)
                if chunk is not None:
                    self._ready.append(chunk)
                if now >= job_deadline:
                    await self._stop_reading()
                    raise UpstreamTimeout("job timeout") from None
                if now >= self.last_token_at + idle_s:
                    await self._stop_reading()
                    raise UpstreamTimeout(f"no token for {idle_s:g} s") from None
            finally:
                self._timer = None
                self._wake = None
        if reader.cancelled():  # only a cancel or a preemption cancels it while we run
            await self._flush()
            return None
        error = reader.exception()
        await self._flush()
        if error is not None:
            raise error
        return reader.result()

    async def _stop_reading(self) -> None:
        """End the reader (and the HTTP stream); what it had read counts as streamed."""
        await self.close()
        await self._flush()

    def response(self) -> str:
        """The whole answer: what the continued attempts streamed, then this one's."""
        head = self.resume.text if self.resume is not None else ""
        return head + self.chunker.response()

    def resume_after(self) -> ResumeFrom | None:
        """Where an attempt continuing this one's stream starts; None when nothing streamed."""
        resume = self.resume
        if self.chunker.next_seq == (resume.next_seq if resume is not None else 0):
            return resume
        return ResumeFrom(
            attempt=resume.attempt if resume is not None else self.running.job.data.attempt,
            text=self.response(),
            next_seq=self.chunker.next_seq,
            tokens=(resume.tokens if resume is not None else 0) + self.chunker.tokens,
        )

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
            job_types=self.deps.job_types,
        )

    async def _flush(self) -> None:
        chunk = self.chunker.flush(self.deps.clock())
        if chunk is not None:
            self._ready.append(chunk)
        await self._send_ready()

    async def _send_ready(self) -> None:
        ready = self._ready
        while ready:
            await self._send(ready.popleft())

    async def _send(self, chunk: Chunk) -> None:
        # Hot path: no pydantic; the record's bytes are built from the chunk's own fields.
        producer = self.deps.producer
        if self._after is not None:
            after, self._after = self._after, None
            await after
        if self._partition is None:
            # Where the default partitioner puts the key (and where readers look for the
            # job), worked out once per attempt rather than by a murmur2 in Python per chunk.
            partitions = await producer.partitions_for(self._topic)
            self._partition = chunk_partition(self.running.job.job_id, len(partitions))
        future = await producer.send(
            self._topic,
            self._encoder.encode(chunk),
            key=self._key,
            partition=self._partition,
            headers=self._encoder.headers,
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
        """Stop the reader if it still runs: its end was `run`'s to report, not ours."""
        reader = self.running.reader
        if reader is None:
            return
        if not reader.done():
            reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, UpstreamError):
            await reader
