"""Streamer figures over real Kafka: concurrency, CPU and records per token, priority."""

from __future__ import annotations

import asyncio
import time
import uuid

from aiokafka import AIOKafkaConsumer

from deploy.localstack.stack import Stack
from shared.contracts import ModelConfig, RunJob, RunJobData, parse_record, utcnow
from shared.kafka import assign_every_partition, make_producer, publish
from shared.topics import Priority, chunks_topic, events_topic, job_topic
from tests.bench.figures import Figure, cpu_seconds


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

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self.topics = (events_topic(prefix), chunks_topic(prefix))
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

    async def wait(self, job_ids: list[str], timeout: float) -> None:
        deadline = time.perf_counter() + timeout
        while not all(j in self.finished for j in job_ids):
            if time.perf_counter() > deadline:
                done = sum(j in self.finished for j in job_ids)
                raise TimeoutError(f"{done}/{len(job_ids)} jobs finished in {timeout}s")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.consumer.stop()


async def measure(stack: Stack, bootstrap: str, streams: int, tokens: int) -> list[Figure]:
    prefix = stack.topic_prefix
    streamer_pid = stack.processes["streamer"].pid
    watch = Watch(bootstrap, prefix)
    await watch.start()
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        # Concurrency, CPU and records per token: `streams` jobs at once.
        jobs = [
            run_job(f"bench {i} [[sim tokens={tokens}]]", Priority.NORMAL, tokens)
            for i in range(streams)
        ]
        cpu0 = cpu_seconds(streamer_pid)
        await asyncio.gather(
            *(publish(producer, job_topic(Priority.NORMAL, prefix), j) for j in jobs)
        )
        await watch.wait([j.job_id for j in jobs], timeout=300)
        cpu = cpu_seconds(streamer_pid) - cpu0
        ids = {j.job_id for j in jobs}
        last_start = max(watch.started[j] for j in ids)
        first_end = min(watch.finished[j] for j in ids)
        overlap = last_start < first_end
        figures = [
            Figure(
                "streamer: concurrent streams held by one process",
                float(streams if overlap else 0),
                "streams",
                ">= 500",
                "all started before the first finished" if overlap else "streams did not overlap",
            ),
            Figure(
                "streamer: CPU per streamed token",
                cpu / max(watch.tokens, 1) * 1e6,
                "us",
                "<= 100",
                f"{watch.tokens} tokens, {cpu:.2f} CPU s in the streamer process",
            ),
            Figure(
                "streamer: Kafka chunk records per token",
                watch.chunk_records / max(watch.tokens, 1),
                "ratio",
                "<= 0.125",
            ),
        ]

        # Priority: an urgent job behind a backlog of normal ones.
        backlog = [
            run_job(f"backlog {i} [[sim tokens=200 tps=100]]", Priority.NORMAL, 200)
            for i in range(streams * 2)
        ]
        await asyncio.gather(
            *(publish(producer, job_topic(Priority.NORMAL, prefix), j) for j in backlog)
        )
        await asyncio.sleep(1.0)
        urgent = run_job("urgent [[sim tokens=5]]", Priority.URGENT, 5)
        sent = time.time()
        await publish(producer, job_topic(Priority.URGENT, prefix), urgent)
        await watch.wait([urgent.job_id], timeout=120)
        urgent_start = watch.started[urgent.job_id]
        await watch.wait([j.job_id for j in backlog], timeout=300)
        # Every slot is busy when the urgent job comes: it must take the first slot that
        # frees, ahead of every normal job still waiting.
        freed = min((t for t in watch.finished.values() if t > sent), default=urgent_start)
        overtaken = sum(sent < watch.started[j.job_id] < urgent_start for j in backlog)
        figures += [
            Figure(
                "streamer: urgent job start delay under a normal backlog",
                (urgent_start - sent) * 1000,
                "ms",
                "-",
                f"{len(backlog)} normal jobs queued ahead, every one of {streams} slots busy",
            ),
            Figure(
                "streamer: urgent job start after the first slot freed",
                max(0.0, urgent_start - freed) * 1000,
                "ms",
                "-",
                "the rest of the delay is waiting for a running job to finish",
            ),
            Figure(
                "streamer: normal jobs started ahead of the waiting urgent job",
                float(overtaken),
                "jobs",
                "<= 0",
            ),
        ]
        return figures
    finally:
        await producer.stop()
        await watch.stop()
