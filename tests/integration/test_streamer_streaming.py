"""The streamer against the real Kafka broker and the LLM simulator: streaming, cancels, order."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from deploy.simulator.server import Simulator
from deploy.simulator.settings import SimulatorSettings
from services.streamer.app import StreamerService, create_service
from services.streamer.preemption import PREEMPTED_REASON
from services.streamer.settings import StreamerSettings
from shared.contracts import (
    CancelJob,
    CancelJobData,
    JobDeadLettered,
    ModelConfig,
    RunJob,
    RunJobData,
    parse_record,
)
from shared.kafka import publish
from shared.routing import chunk_partition
from shared.topics import Priority, chunks_topic, control_topic, dlq_topic, events_topic, job_topic
from tests.support import wait_for

pytestmark = pytest.mark.kafka

StartStreamer = Callable[..., Awaitable[StreamerService]]


@pytest.fixture(scope="module")
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorSettings(port=0, ttft_ms=0, tokens_per_second=0)) as server:
        yield server


@pytest.fixture
async def fresh_sim(sim: Simulator) -> Simulator:
    async with aiohttp.ClientSession() as http, http.post(f"{sim.url}/_sim/reset") as resp:
        assert resp.status == 200
    return sim


@pytest.fixture
async def start_streamer(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str, fresh_sim: Simulator
) -> AsyncIterator[StartStreamer]:
    services: list[StreamerService] = []

    async def start(**overrides: Any) -> StreamerService:
        values: dict[str, Any] = {
            "kafka_bootstrap_servers": kafka_bootstrap,
            "topic_prefix": topic_prefix,
            "streamjobs_auth_secret": auth_secret,
            "streamer_port": 0,
            "openai_base_url": fresh_sim.base_url,
            "streamer_group_id": f"{topic_prefix}-streamer",
            "streamer_retry_group_id": f"{topic_prefix}-streamer-retry",
            "streamer_session_timeout_ms": 6000,
            "streamer_heartbeat_interval_ms": 500,
            "streamer_grace_s": 2,
            **overrides,
        }
        service = create_service(StreamerSettings(**values))
        await service.start()
        services.append(service)
        await wait_for(
            lambda: all(service._intakes[n].ready() for n in ("jobs", "retry")),
            timeout=30,
            message="the streamer's consumers got their partitions",
        )
        return service

    yield start
    for service in reversed(services):
        await service.stop()


async def read_topic(
    bootstrap: str, topic: str, *, until: Callable[[list[bytes]], bool], timeout: float = 20.0
) -> list[bytes]:
    """Every value of `topic` from the beginning until `until(values)` holds.

    tests.support.read_topic finds no partitions of a topic created after its
    client's metadata (aiokafka's `topics()` does not update the client's cluster),
    so this reader subscribes without a group and lets aiokafka assign every partition.
    """
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        values: list[bytes] = []
        deadline = time.monotonic() + timeout
        while not until(values):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s reading {topic}: {len(values)}")
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                values.extend(r.value for r in records if r.value is not None)
        return values
    finally:
        await consumer.stop()


def make_job(
    prompt: str, *, priority: Priority = Priority.NORMAL, user: str = "alice", max_tokens: int = 512
) -> RunJob:
    return RunJob(
        job_id=str(uuid.uuid4()),
        data=RunJobData(
            user_id=user,
            prompt=prompt,
            job_type="analysis",
            priority=priority,
            config=ModelConfig(max_tokens=max_tokens),
            submitted_at=datetime.now(UTC),
        ),
    )


async def submit(producer: AIOKafkaProducer, prefix: str, job: RunJob) -> None:
    await publish(producer, job_topic(job.data.priority, prefix), job)


def records_of(values: list[bytes], job_id: str | None = None) -> list[Any]:
    out = [parse_record(v) for v in values]
    return [r for r in out if job_id is None or r.job_id == job_id]


def types_of(values: list[bytes], job_id: str) -> list[str]:
    return [r.type for r in records_of(values, job_id)]


FINAL = {"job.completed", "job.failed", "job.cancelled"}


async def events_until_final(bootstrap: str, prefix: str, job_id: str) -> list[Any]:
    values = await read_topic(
        bootstrap,
        events_topic(prefix),
        until=lambda vs: any(t in FINAL for t in types_of(vs, job_id)),
        timeout=30,
    )
    return records_of(values, job_id)


async def chunks_of(bootstrap: str, prefix: str, job_id: str, count: int) -> list[Any]:
    values = await read_topic(
        bootstrap,
        chunks_topic(prefix),
        until=lambda vs: len(records_of(vs, job_id)) >= count,
        timeout=30,
    )
    return sorted(records_of(values, job_id), key=lambda c: c.data.seq)


async def test_job_streams_to_completion_with_gapless_chunks_and_exact_response(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
    fresh_sim: Simulator,
) -> None:
    service = await start_streamer()
    job = make_job("Explain Kafka. [[sim tokens=120 tps=400]]")
    await submit(producer, topic_prefix, job)

    events = await events_until_final(kafka_bootstrap, topic_prefix, job.job_id)
    assert [e.type for e in events] == ["job.started", "job.completed"]
    started, completed = events
    assert started.data.attempt == 1 and started.data.worker == service.worker
    result = completed.data
    chunks = await chunks_of(kafka_bootstrap, topic_prefix, job.job_id, result.chunks)

    assert [c.data.seq for c in chunks] == list(range(result.chunks))
    assert result.last_seq == result.chunks - 1
    assert chunks[0].data.tokens == 1
    assert "".join(c.data.text for c in chunks) == result.response
    assert sum(c.data.tokens for c in chunks) == 120
    # Coalescing: far fewer records than tokens.
    assert result.chunks <= 120 // 4
    assert result.usage.completion_tokens == 120
    assert result.usage.prompt_tokens > 0
    assert result.usage.total_tokens == result.usage.prompt_tokens + 120
    assert fresh_sim.stats.streams_completed == 1


async def test_usage_matches_what_the_simulator_reports_for_the_same_request(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
    fresh_sim: Simulator,
) -> None:
    import openai

    from services.streamer.upstream import messages_for
    from shared.jobtypes import load_job_types

    await start_streamer()
    job = make_job("Count to ten. [[sim tokens=17]]")
    await submit(producer, topic_prefix, job)
    events = await events_until_final(kafka_bootstrap, topic_prefix, job.job_id)
    completed = events[-1]
    assert completed.type == "job.completed"

    async with openai.AsyncOpenAI(
        base_url=fresh_sim.base_url, api_key="sim", max_retries=0
    ) as client:
        direct = await client.chat.completions.create(
            model=job.data.config.model,
            messages=messages_for(job.data, load_job_types()),
            max_tokens=job.data.config.max_tokens,
        )
    assert direct.usage is not None
    assert completed.data.usage.prompt_tokens == direct.usage.prompt_tokens
    assert completed.data.usage.completion_tokens == direct.usage.completion_tokens
    assert completed.data.response == direct.choices[0].message.content


async def test_cancel_of_a_running_job_closes_the_upstream_stream_and_ends_the_chunks(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
    fresh_sim: Simulator,
) -> None:
    await start_streamer()
    job = make_job("A long essay. [[sim tokens=2000 tps=50]]", max_tokens=4000)
    await submit(producer, topic_prefix, job)
    await chunks_of(kafka_bootstrap, topic_prefix, job.job_id, 3)

    await publish(
        producer,
        control_topic(topic_prefix),
        CancelJob(job_id=job.job_id, data=CancelJobData(user_id="alice")),
    )
    events = await events_until_final(kafka_bootstrap, topic_prefix, job.job_id)
    assert [e.type for e in events] == ["job.started", "job.cancelled"]
    cancelled = events[-1].data
    await wait_for(
        lambda: fresh_sim.stats.streams_cancelled_by_client == 1,
        message="the simulator saw the client close the stream",
    )
    assert fresh_sim.stats.streams_completed == 0
    chunks = await chunks_of(kafka_bootstrap, topic_prefix, job.job_id, cancelled.last_seq + 1)
    assert [c.data.seq for c in chunks] == list(range(cancelled.last_seq + 1))


async def test_cancel_by_another_user_is_ignored(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
) -> None:
    await start_streamer()
    job = make_job("Short. [[sim tokens=40 tps=40]]")
    await submit(producer, topic_prefix, job)
    await chunks_of(kafka_bootstrap, topic_prefix, job.job_id, 1)
    await publish(
        producer,
        control_topic(topic_prefix),
        CancelJob(job_id=job.job_id, data=CancelJobData(user_id="mallory")),
    )
    events = await events_until_final(kafka_bootstrap, topic_prefix, job.job_id)
    assert events[-1].type == "job.completed"


async def test_cancel_of_a_queued_job_skips_it_without_calling_the_llm(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
    fresh_sim: Simulator,
) -> None:
    await start_streamer(streamer_slots=1)
    blocker = make_job("Blocker. [[sim tokens=60 tps=40]]")
    queued = make_job("Never run me. [[sim tokens=5]]")
    await submit(producer, topic_prefix, blocker)
    await chunks_of(kafka_bootstrap, topic_prefix, blocker.job_id, 1)
    await submit(producer, topic_prefix, queued)
    await publish(
        producer,
        control_topic(topic_prefix),
        CancelJob(job_id=queued.job_id, data=CancelJobData(user_id="root", admin=True)),
    )

    events = await events_until_final(kafka_bootstrap, topic_prefix, queued.job_id)
    assert [e.type for e in events] == ["job.cancelled"]
    assert events[0].data.last_seq == -1
    usage = events[0].data.usage
    assert usage is not None and usage.total_tokens == 0, "never asked, nothing used"
    assert not events[0].data.usage_estimated
    blocker_events = await events_until_final(kafka_bootstrap, topic_prefix, blocker.job_id)
    assert events[0].occurred_at < blocker_events[-1].occurred_at, (
        "a waiting job is cancelled at once, not when a slot frees"
    )
    assert fresh_sim.stats.requests_total == 1


async def test_a_low_job_completes_under_a_steady_urgent_load(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
) -> None:
    await start_streamer(streamer_slots=1, streamer_aging_s=0.3)
    low = make_job("Low. [[sim tokens=3]]", priority=Priority.LOW)
    urgent_ids: list[str] = []

    async def urgent_load() -> None:
        # Urgent work keeps arriving faster than the one slot drains it.
        for i in range(40):
            job = make_job(f"Urgent {i}. [[sim tokens=4 tps=40]]", priority=Priority.URGENT)
            urgent_ids.append(job.job_id)
            await submit(producer, topic_prefix, job)
            if i == 2:
                await submit(producer, topic_prefix, low)
            await asyncio.sleep(0.05)

    load = asyncio.create_task(urgent_load())
    try:
        events = await events_until_final(kafka_bootstrap, topic_prefix, low.job_id)
    finally:
        await load
    assert events[-1].type == "job.completed"
    values = await read_topic(
        kafka_bootstrap,
        events_topic(topic_prefix),
        until=lambda vs: any(r.type == "job.completed" for r in records_of(vs, low.job_id)),
    )
    done = {r.job_id for r in records_of(values) if r.type == "job.completed"}
    assert len(done & set(urgent_ids)) < len(urgent_ids), (
        "the low job finished only once the urgent load had drained: it starved"
    )


async def test_urgent_job_starts_before_normal_backlog(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
) -> None:
    await start_streamer(streamer_slots=1)
    first = make_job("First. [[sim tokens=40 tps=25]]")
    await submit(producer, topic_prefix, first)
    await chunks_of(kafka_bootstrap, topic_prefix, first.job_id, 1)
    backlog = [make_job(f"Normal {i}. [[sim tokens=3]]") for i in range(5)]
    for job in backlog:
        await submit(producer, topic_prefix, job)
    urgent = make_job("Urgent. [[sim tokens=3]]", priority=Priority.URGENT)
    await submit(producer, topic_prefix, urgent)

    everyone = [first, *backlog, urgent]
    values = await read_topic(
        kafka_bootstrap,
        events_topic(topic_prefix),
        until=lambda vs: sum(r.type == "job.completed" for r in records_of(vs)) == len(everyone),
        timeout=40,
    )
    started = [r for r in records_of(values) if r.type == "job.started"]
    started.sort(key=lambda r: r.occurred_at)
    order = [r.job_id for r in started]
    assert order[0] == first.job_id
    assert order[1] == urgent.job_id, "the urgent job started right after the running one"


async def test_an_urgent_job_preempts_the_youngest_low_job_which_completes_once_after_it(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
) -> None:
    service = await start_streamer(streamer_slots=2)
    old = make_job("Old low. [[sim tokens=200 tps=40]]", priority=Priority.LOW)
    await submit(producer, topic_prefix, old)
    await chunks_of(kafka_bootstrap, topic_prefix, old.job_id, 1)
    young = make_job("Young low. [[sim tokens=60 tps=40]]", priority=Priority.LOW)
    await submit(producer, topic_prefix, young)
    await chunks_of(kafka_bootstrap, topic_prefix, young.job_id, 1)
    urgent = make_job("Urgent. [[sim tokens=3]]", priority=Priority.URGENT)
    await submit(producer, topic_prefix, urgent)

    everyone = (old, young, urgent)
    values = await read_topic(
        kafka_bootstrap,
        events_topic(topic_prefix),
        until=lambda vs: all("job.completed" in types_of(vs, j.job_id) for j in everyone),
        timeout=40,
    )
    assert types_of(values, old.job_id) == ["job.started", "job.completed"], "never stopped"
    assert types_of(values, urgent.job_id) == ["job.started", "job.completed"]
    events = records_of(values, young.job_id)
    assert [e.type for e in events] == [
        "job.started",
        "job.retrying",
        "job.started",
        "job.completed",
    ]
    _, stopped, again, completed = events
    assert stopped.data.preempted and not stopped.data.requeued
    assert stopped.data.reason == PREEMPTED_REASON
    assert (stopped.data.attempt, again.data.attempt, completed.data.attempt) == (1, 2, 2)
    assert stopped.data.usage is not None, "the stopped attempt is billed for what it streamed"
    urgent_started = records_of(values, urgent.job_id)[0].occurred_at
    old_completed = records_of(values, old.job_id)[-1].occurred_at
    assert urgent_started < old_completed, "the urgent job took the stopped job's slot"
    assert again.occurred_at >= urgent_started

    # The result is the second attempt's whole answer: nothing lost, nothing twice.
    result = completed.data
    chunks = await chunks_of(kafka_bootstrap, topic_prefix, young.job_id, result.chunks + 1)
    second = [c for c in chunks if c.data.attempt == 2]
    assert [c.data.seq for c in second] == list(range(result.chunks))
    assert "".join(c.data.text for c in second) == result.response
    assert sum(c.data.tokens for c in second) == result.usage.completion_tokens == 60
    preempted = service.registry.get_sample_value(
        "streamjobs_streamer_jobs_preempted_total", {"job_type": "analysis", "priority": "low"}
    )
    assert preempted == 1


async def test_poison_records_go_to_the_dlq_and_the_consumer_carries_on(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
) -> None:
    await start_streamer()
    topic = job_topic(Priority.NORMAL, topic_prefix)
    bad_id = str(uuid.uuid4())
    await producer.send_and_wait(topic, b"\xffnot json at all", key=b"poison-1")
    await producer.send_and_wait(
        topic, json.dumps({"type": "job.run", "job_id": bad_id, "data": {}}).encode(), key=None
    )
    good = make_job("Still works. [[sim tokens=5]]")
    await submit(producer, topic_prefix, good)

    events = await events_until_final(kafka_bootstrap, topic_prefix, good.job_id)
    assert events[-1].type == "job.completed"
    values = await read_topic(
        kafka_bootstrap, dlq_topic(topic_prefix), until=lambda vs: len(vs) >= 2
    )
    dead = [r for r in records_of(values) if isinstance(r, JobDeadLettered)]
    assert len(dead) == 2
    assert {d.data.source_topic for d in dead} == {topic}
    assert bad_id in {d.job_id for d in dead}
    assert all(d.data.reason.startswith("invalid record") for d in dead)


async def _is(value: Awaitable[float | None], expected: float) -> bool:
    return await value == expected


async def test_ops_routes_report_health_readiness_metrics_and_lag_per_band(
    start_streamer: StartStreamer, producer: AIOKafkaProducer, topic_prefix: str
) -> None:
    service = await start_streamer(streamer_slots=1, streamer_lag_interval_s=0.1)
    base = f"http://127.0.0.1:{service.port}"
    # Long enough that the slot is still held while the routes are read, however slow the box.
    await submit(producer, topic_prefix, make_job("Hold the slot. [[sim tokens=400 tps=25]]"))
    for i in range(3):
        await submit(producer, topic_prefix, make_job(f"Low {i}.", priority=Priority.LOW))
    low_lag = (
        f'streamjobs_streamer_consumer_lag_records{{band="low",topic="{topic_prefix}.jobs.low"}}'
    )

    async def metrics() -> str:
        async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as resp:
            return await resp.text()

    async def sample(prefix: str) -> float | None:
        for line in (await metrics()).splitlines():
            if line.startswith(prefix):
                return float(line.rsplit(" ", 1)[1])
        return None

    # The first job holds the only slot, and every low job waits behind it: all three
    # count as the low band's lag.
    await wait_for(
        lambda: _is(sample("streamjobs_streamer_slots_in_use "), 1.0),
        timeout=10,
        message="the first job holds the slot",
    )
    await wait_for(
        lambda: _is(sample(low_lag), 3.0), timeout=10, message="lag of the low band reaches 3"
    )
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{base}/readyz") as resp:
            assert resp.status == 200, await resp.text()
    text = await metrics()
    assert "streamjobs_streamer_slots_in_use 1.0" in text
    assert "streamjobs_streamer_chunks_published_total" in text


async def test_a_jobs_chunks_land_on_the_partition_its_readers_compute(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
) -> None:
    await start_streamer()
    jobs = [make_job(f"Placed {i}. [[sim tokens=30 tps=300]]") for i in range(6)]
    for job in jobs:
        await submit(producer, topic_prefix, job)
    expected = 0
    for job in jobs:
        events = await events_until_final(kafka_bootstrap, topic_prefix, job.job_id)
        assert events[-1].type == "job.completed"
        expected += events[-1].data.chunks
    topic = chunks_topic(topic_prefix)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        placed: dict[str, set[int]] = {}
        seen = 0
        deadline = time.monotonic() + 20
        while seen < expected:
            assert time.monotonic() < deadline, f"{seen} of {expected} chunks: {placed}"
            batch = await consumer.getmany(timeout_ms=200)
            for tp, records in batch.items():
                for record in records:
                    seen += 1
                    placed.setdefault(parse_record(record.value or b"").job_id, set()).add(
                        tp.partition
                    )
    finally:
        await consumer.stop()
    assert len(partitions) == 4
    for job in jobs:
        assert placed[job.job_id] == {chunk_partition(job.job_id, len(partitions))}, job.job_id
