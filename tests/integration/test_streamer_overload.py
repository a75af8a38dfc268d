"""A loaded streamer over the real broker and the simulator: overloaded, it leaves jobs in
Kafka until its loop catches up, and an urgent job still starts before every waiting normal
one, also when the intake has not fetched it yet.

The overload is injected as the loop lag samples an overloaded loop's monitor reports (the
monitor itself is tested on a loop kept busy, in tests/unit/test_streamer_capacity.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from deploy.simulator.server import Simulator
from deploy.simulator.settings import SimulatorSettings
from services.streamer.app import StreamerService, create_service
from services.streamer.settings import StreamerSettings
from shared.contracts import CancelJob, CancelJobData, ModelConfig, RunJob, RunJobData, parse_record
from shared.kafka import publish
from shared.topics import Priority, control_topic, events_topic, job_topic
from tests.support import wait_for

pytestmark = pytest.mark.kafka

StartStreamer = Callable[..., Awaitable[StreamerService]]

# Bounds far over what a shared test machine's loop lags by itself; the injected lag is over
# them by far, so only the injection makes the streamer overloaded.
MAX_LAG_MS = 2000.0
RESUME_LAG_MS = 1500.0
INJECTED_LAG_S = 10.0


class Overload:
    """Feeds the streamer's admission loop lag samples an overloaded loop would show.

    Alongside its own monitor's samples, as a lagging loop's monitor would report them.
    """

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    async def start(self, service: StreamerService) -> None:
        self._task = asyncio.create_task(self._feed(service))
        await wait_for(
            lambda: metric(service, "streamjobs_streamer_overloaded") == 1,
            message="the streamer is overloaded",
        )

    async def _feed(self, service: StreamerService) -> None:
        while True:
            service.dispatcher.loop_lag(INJECTED_LAG_S)
            # Well inside the recovery time: between two of these the streamer's own
            # monitor sees a calm loop, and a calm stretch that long would end the overload.
            await asyncio.sleep(0.05)

    async def stop(self, service: StreamerService) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await wait_for(
            lambda: metric(service, "streamjobs_streamer_overloaded") == 0,
            message="the streamer caught up once the lag was gone",
        )


@pytest.fixture
async def overload() -> AsyncIterator[Overload]:
    injected = Overload()
    yield injected
    task = injected._task
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture(scope="module")
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorSettings(port=0, ttft_ms=0, tokens_per_second=0)) as server:
        yield server


@pytest.fixture
async def start_streamer(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str, sim: Simulator
) -> AsyncIterator[StartStreamer]:
    services: list[StreamerService] = []

    async def start(**overrides: Any) -> StreamerService:
        service = create_service(
            StreamerSettings(
                kafka_bootstrap_servers=kafka_bootstrap,
                topic_prefix=topic_prefix,
                streamjobs_auth_secret=auth_secret,
                streamer_port=0,
                openai_base_url=sim.base_url,
                streamer_group_id=f"{topic_prefix}-streamer",
                streamer_retry_group_id=f"{topic_prefix}-streamer-retry",
                streamer_session_timeout_ms=6000,
                streamer_heartbeat_interval_ms=500,
                streamer_grace_s=0,
                streamer_lag_interval_s=0.2,
                streamer_max_loop_lag_ms=MAX_LAG_MS,
                streamer_resume_loop_lag_ms=RESUME_LAG_MS,
                **overrides,
            )
        )
        await service.start()
        services.append(service)
        await wait_for(
            lambda: (
                all(service._intakes[n].ready() for n in ("jobs", "retry"))
                and service._control is not None
                and service._control.ready()
            ),
            timeout=30,
            message="the streamer's consumers got their partitions",
        )
        return service

    yield start
    for service in reversed(services):
        await service.stop()


def make_job(prompt: str, priority: Priority = Priority.NORMAL) -> RunJob:
    return RunJob(
        job_id=str(uuid.uuid4()),
        data=RunJobData(
            user_id="alice",
            prompt=prompt,
            job_type="analysis",
            priority=priority,
            config=ModelConfig(max_tokens=512),
            submitted_at=datetime.now(UTC),
        ),
    )


async def submit(producer: AIOKafkaProducer, prefix: str, *jobs: RunJob) -> None:
    for job in jobs:
        await publish(producer, job_topic(job.data.priority, prefix), job)


async def started_at(
    bootstrap: str, prefix: str, job_ids: set[str], timeout: float = 60.0
) -> dict[str, float]:
    """When each job's first attempt started (the streamer's clock), once all of them did."""
    consumer = AIOKafkaConsumer(
        events_topic(prefix),
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    started: dict[str, float] = {}
    try:
        deadline = time.monotonic() + timeout
        while not job_ids <= started.keys():
            if time.monotonic() > deadline:
                missing = len(job_ids - started.keys())
                raise AssertionError(f"{missing} of {len(job_ids)} jobs did not start")
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    event = parse_record(record.value or b"")
                    if event.type == "job.started" and event.job_id in job_ids:
                        started.setdefault(event.job_id, event.occurred_at.timestamp())
        return started
    finally:
        await consumer.stop()


def metric(service: StreamerService, name: str, **labels: str) -> float:
    return service.registry.get_sample_value(name, labels) or 0.0


def jobs_started(service: StreamerService) -> float:
    return sum(
        sample.value
        for family in service.registry.collect()
        if family.name == "streamjobs_streamer_jobs_started"
        for sample in family.samples
        if sample.name.endswith("_total")
    )


def paused(service: StreamerService, priority: Priority) -> bool:
    """Whether every partition of the band is paused: its records stay in Kafka."""
    consumer = service._intakes["jobs"].consumer
    topic = job_topic(priority, service.settings.topic_prefix)
    band = {tp for tp in consumer.assignment() if tp.topic == topic}
    return bool(band) and band <= consumer.paused()


async def test_an_overloaded_streamer_leaves_jobs_in_kafka_and_takes_them_once_it_caught_up(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
    overload: Overload,
) -> None:
    service = await start_streamer(streamer_slots=4)
    await overload.start(service)
    await wait_for(lambda: paused(service, Priority.NORMAL), message="the normal band paused")
    jobs = [make_job(f"While overloaded {i}. [[sim tokens=3]]") for i in range(3)]
    await submit(producer, topic_prefix, *jobs)
    normal = job_topic(Priority.NORMAL, topic_prefix)
    await wait_for(
        lambda: (
            metric(service, "streamjobs_streamer_consumer_lag_records", topic=normal, band="normal")
            == len(jobs)
        ),
        timeout=30,
        message="the streamer saw the jobs waiting in Kafka",
    )
    samples = metric(service, "streamjobs_streamer_loop_lag_seconds_count")
    await wait_for(
        lambda: metric(service, "streamjobs_streamer_loop_lag_seconds_count") >= samples + 3,
        timeout=30,
        message="the streamer had turns to take them",
    )
    assert metric(service, "streamjobs_streamer_overloaded") == 1
    assert jobs_started(service) == 0, "an overloaded streamer started a job"
    assert metric(service, "streamjobs_streamer_jobs_waiting") == 0, "they stayed in Kafka"

    freed = time.time()
    await overload.stop(service)
    started = await started_at(kafka_bootstrap, topic_prefix, {j.job_id for j in jobs})
    assert min(started.values()) >= freed, "a job started while the streamer was overloaded"


async def test_an_urgent_job_behind_an_overloaded_streamers_backlog_takes_the_first_freed_slot(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
    overload: Overload,
) -> None:
    service = await start_streamer(streamer_slots=3)
    long_jobs = [make_job(f"Long {i}. [[sim tokens=600 tps=20]]") for i in range(3)]
    await submit(producer, topic_prefix, *long_jobs)
    await wait_for(lambda: jobs_started(service) == 3, timeout=30, message="every slot is busy")
    backlog = [make_job(f"Backlog {i}. [[sim tokens=2]]") for i in range(8)]
    await submit(producer, topic_prefix, *backlog)
    await wait_for(
        lambda: metric(service, "streamjobs_streamer_jobs_waiting") >= 3,
        timeout=30,
        message="a prefetch of normal jobs waits in memory",
    )
    await overload.start(service)
    urgent = make_job("Urgent. [[sim tokens=2]]", Priority.URGENT)
    await submit(producer, topic_prefix, urgent)
    # A slot frees while the streamer is still overloaded.
    await publish(
        producer,
        control_topic(topic_prefix),
        CancelJob(job_id=long_jobs[0].job_id, data=CancelJobData(user_id="alice")),
    )
    await wait_for(
        lambda: jobs_started(service) == 4,
        timeout=30,
        message="a job took the freed slot while the streamer was overloaded",
    )
    assert metric(service, "streamjobs_streamer_overloaded") == 1
    urgent_start = await started_at(kafka_bootstrap, topic_prefix, {urgent.job_id})
    assert urgent_start, "the urgent job took it"
    assert jobs_started(service) == 4, "a normal job started while the streamer was overloaded"

    await overload.stop(service)
    started = await started_at(
        kafka_bootstrap, topic_prefix, {urgent.job_id, *(j.job_id for j in backlog)}
    )
    overtaking = [j.job_id for j in backlog if started[j.job_id] < started[urgent.job_id]]
    assert not overtaking, f"{len(overtaking)} normal jobs started ahead of the urgent one"


async def test_a_normal_job_waits_until_the_intake_fetched_an_urgent_job_already_in_kafka(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
) -> None:
    service = await start_streamer(streamer_slots=1)
    intake = service._intakes["jobs"]
    holds_back = intake.held_back
    slow_urgent = True

    def held_back(band: int) -> bool:
        # An intake too busy to fetch the urgent band in time, as an overloaded loop's was.
        return (slow_urgent and band == Priority.URGENT.rank) or holds_back(band)

    running = make_job("Running. [[sim tokens=600 tps=20]]")
    await submit(producer, topic_prefix, running)
    await wait_for(lambda: jobs_started(service) == 1, timeout=30, message="the slot is busy")
    intake.held_back = held_back
    await wait_for(lambda: paused(service, Priority.URGENT), message="the urgent band paused")
    backlog = [make_job(f"Backlog {i}. [[sim tokens=2]]") for i in range(3)]
    await submit(producer, topic_prefix, *backlog)
    await wait_for(
        lambda: metric(service, "streamjobs_streamer_jobs_waiting") >= 1,
        timeout=30,
        message="a normal job waits in memory",
    )
    urgent = make_job("Urgent. [[sim tokens=2]]", Priority.URGENT)
    await submit(producer, topic_prefix, urgent)
    await publish(
        producer,
        control_topic(topic_prefix),
        CancelJob(job_id=running.job_id, data=CancelJobData(user_id="alice")),
    )
    await wait_for(
        lambda: metric(service, "streamjobs_streamer_priority_fence_holds_total") >= 1,
        timeout=30,
        message="the freed slot's normal job was held for the urgent record in Kafka",
    )
    assert jobs_started(service) == 1, "a normal job passed the urgent one still in Kafka"

    slow_urgent = False
    started = await started_at(
        kafka_bootstrap, topic_prefix, {urgent.job_id, *(j.job_id for j in backlog)}
    )
    overtaking = [j.job_id for j in backlog if started[j.job_id] < started[urgent.job_id]]
    assert not overtaking, f"{len(overtaking)} normal jobs started ahead of the urgent one"
