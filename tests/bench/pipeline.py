"""Streamer figures over real Kafka: concurrency, CPU and records per token, beside the SDK."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator, Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from deploy.localstack.stack import Stack
from services.streamer.settings import StreamerSettings
from shared.contracts import ModelConfig, RunJob, RunJobData, parse_record, utcnow
from shared.kafka import assign_every_partition, make_producer, publish
from shared.topics import Priority, chunks_topic, events_topic, job_topic
from tests.bench.figures import Figure, cpu_seconds


def peak_concurrency(started: Iterable[float], finished: Iterable[float]) -> int:
    """The most streams running at one moment, from their start and end times (an end at
    the same moment as a start counts first: the slot was handed on, not shared)."""
    events = sorted([(t, 1) for t in started] + [(t, -1) for t in finished])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def run_job(prompt: str, priority: Priority, max_tokens: int) -> RunJob:
    return RunJob(
        job_id=str(uuid.uuid4()),
        data=RunJobData(
            user_id="bench",
            prompt=prompt,
            job_type="analysis",
            priority=priority,
            config=ModelConfig(model="gpt-4o-mini", max_tokens=max_tokens),
            submitted_at=utcnow(),
        ),
    )


class Watch:
    """Reads the events and chunks topics from their end and remembers what each job did.

    `started` and `finished` hold epoch seconds of the events (`occurred_at`).
    """

    def __init__(
        self, bootstrap: str, prefix: str, *, chunks: bool = True, paced: bool = False
    ) -> None:
        # Paced: fetches held up to 100 ms to fill, so that at a moderate rate this reader
        # adds little to the broker's work (where that is measured) and learns ends later.
        fetches = {"fetch_max_wait_ms": 100, "fetch_min_bytes": 1 << 20} if paced else {}
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, **fetches
        )
        # Without chunks it only learns starts and ends: cheaper beside a busy streamer.
        self.topics = (
            (events_topic(prefix), chunks_topic(prefix)) if chunks else (events_topic(prefix),)
        )
        self.started: dict[str, float] = {}
        self.finished: dict[str, float] = {}
        self.chunk_records = 0
        self.tokens = 0
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        partitions = await assign_every_partition(self.consumer, list(self.topics))
        await self.consumer.seek_to_end(*partitions)
        for tp in partitions:  # resolve positions now, before any job is published
            await self.consumer.position(tp)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for record in self.consumer:
            event = parse_record(record.value or b"")
            if event.type == "job.chunk":
                self.chunk_records += 1
                self.tokens += event.data.tokens  # type: ignore[union-attr]
            # When it happened by the streamer's clock: this reader may lag behind a busy
            # streamer, and its own receipt order would misstate what started first.
            elif event.type == "job.started":
                self.started.setdefault(event.job_id, event.occurred_at.timestamp())
            elif event.type in ("job.completed", "job.failed", "job.cancelled"):
                self.finished[event.job_id] = event.occurred_at.timestamp()

    async def started_within(self, job_ids: list[str], timeout: float) -> int:
        """Wait at most `timeout` s for every job to start; how many did."""
        deadline = time.perf_counter() + timeout
        while (done := sum(j in self.started for j in job_ids)) < len(job_ids):
            if time.perf_counter() > deadline:
                break
            await asyncio.sleep(0.02)
        return done

    async def settle(self, job_ids: list[str], stall_s: float, limit_s: float) -> int:
        """Wait until every job finished, none has for `stall_s` or `limit_s` passed; the count
        left unfinished. A benchmark reports what it saw: jobs that never end are counted,
        not waited for.
        """
        left, last = len(job_ids), -1
        began = since = time.perf_counter()
        while left:
            left = sum(j not in self.finished for j in job_ids)
            now = time.perf_counter()
            if left != last:
                last, since = left, now
            elif now - since > stall_s or now - began > limit_s:
                break
            await asyncio.sleep(0.05)
        return left

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.consumer.stop()


@contextlib.asynccontextmanager
async def watching(
    bootstrap: str, prefix: str, *, chunks: bool = True
) -> AsyncIterator[tuple[Watch, AIOKafkaProducer]]:
    """A started `Watch` and a producer for the jobs it watches, stopped in reverse."""
    watch = Watch(bootstrap, prefix, chunks=chunks)
    await watch.start()
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        yield watch, producer
    finally:
        await producer.stop()
        await watch.stop()


def records_per_token_bound(tokens_per_s: float) -> float:
    """At most one chunk record per coalescing window per stream: what the window promises.

    The same window bounds each token's lag, so fewer records per token cost users latency
    (the user scenario holds token lag p99 to 50 ms).
    """
    window_ms = StreamerSettings.model_fields["streamer_chunk_window_ms"].default
    return 1000.0 / (tokens_per_s * window_ms)


async def measure(
    stack: Stack, bootstrap: str, streams: int, tokens: int, tokens_per_s: float
) -> list[Figure]:
    prefix = stack.topic_prefix
    streamer_pid = stack.processes["streamer"].pid
    async with watching(bootstrap, prefix) as (watch, producer):
        # Concurrency, CPU and records per token: `streams` jobs at once.
        jobs = [
            run_job(f"bench {i} [[sim tokens={tokens}]]", Priority.NORMAL, tokens)
            for i in range(streams)
        ]
        cpu0 = cpu_seconds(streamer_pid)
        await asyncio.gather(
            *(publish(producer, job_topic(Priority.NORMAL, prefix), j) for j in jobs)
        )
        unfinished = await watch.settle([j.job_id for j in jobs], stall_s=20, limit_s=180)
        cpu = cpu_seconds(streamer_pid) - cpu0
        ids = {j.job_id for j in jobs}
        peak = peak_concurrency(
            (watch.started[j] for j in ids if j in watch.started),
            (watch.finished[j] for j in ids if j in watch.finished),
        )
        trouble = f"; {unfinished} jobs never finished" if unfinished else ""
        figures = [
            Figure(
                "streamer: concurrent streams held by one process",
                float(peak),
                "streams",
                ">= 500",
                f"the most running at one moment of {streams} submitted at once; the streamer"
                " starts no more while its loop lag p99 is over STREAMER_MAX_LOOP_LAG_MS" + trouble,
            ),
            Figure(
                "streamer: CPU per streamed token",
                cpu / max(watch.tokens, 1) * 1e6,
                "us",
                "-",
                f"{watch.tokens} tokens, {cpu:.2f} CPU s in the streamer process; the target is"
                " its ratio to the SDK's, below",
            ),
            Figure(
                "streamer: Kafka chunk records per token",
                watch.chunk_records / max(watch.tokens, 1),
                "ratio",
                f"<= {records_per_token_bound(tokens_per_s):.2f}",
                f"{watch.chunk_records} records for {watch.tokens} tokens at {tokens_per_s:g}"
                " tokens/s per stream; the target is one record per coalescing window",
            ),
        ]
        return figures


def sdk_ratio(streamer: Figure, sdk: Figure) -> Figure:
    """Streamer CPU per token over the SDK's reading the same streams in this run."""
    ratio = streamer.value / sdk.value if sdk.value else math.nan
    return Figure(
        "streamer: CPU per token / SDK CPU per token (same run)",
        ratio,
        "ratio",
        "<= 0.3",
        f"{streamer.value:.1f} us in the streamer vs {sdk.value:.1f} us for the openai SDK alone"
        " reading the same streams from the simulator",
    )
