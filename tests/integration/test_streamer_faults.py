"""Upstream faults: retries via the retry topic, the dead-letter topic, breaker, timeouts."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from deploy.simulator.server import Simulator
from services.streamer.breaker import BreakerState
from shared.contracts import JobDeadLettered
from shared.topics import chunks_topic, dlq_topic
from tests.integration.test_streamer_streaming import (
    StartStreamer,
    events_until_final,
    fresh_sim,
    make_job,
    read_topic,
    records_of,
    sim,
    start_streamer,
    submit,
)
from tests.support import wait_for

pytestmark = pytest.mark.kafka
__all__ = ["fresh_sim", "sim", "start_streamer"]  # fixtures shared with streaming

FAST_RETRIES: dict[str, Any] = {"streamer_retry_base_s": 0.05, "streamer_retry_max_s": 0.2}


def of_attempt(values: list[bytes], job_id: str, attempt: int) -> list[Any]:
    return [c for c in records_of(values, job_id) if c.data.attempt == attempt]


async def completes_after_retries(
    kafka_bootstrap: str, topic_prefix: str, producer: AIOKafkaProducer, directive: str
) -> list[Any]:
    # A unique prompt: the simulator counts `fail_times` per distinct request.
    job = make_job(f"Job {uuid.uuid4()} [[sim {directive}]]")
    await submit(producer, topic_prefix, job)
    events = await events_until_final(kafka_bootstrap, topic_prefix, job.job_id)
    completed = events[-1]
    assert completed.type == "job.completed", events
    final_attempt = completed.data.attempt
    values = await read_topic(
        kafka_bootstrap,
        chunks_topic(topic_prefix),
        until=lambda vs: len(of_attempt(vs, job.job_id, final_attempt)) >= completed.data.chunks,
    )
    mine = sorted(of_attempt(values, job.job_id, final_attempt), key=lambda c: c.data.seq)
    assert [c.data.seq for c in mine] == list(range(completed.data.chunks))
    assert "".join(c.data.text for c in mine) == completed.data.response
    return events


@pytest.mark.parametrize(
    ("directive", "attempts"),
    [
        ("tokens=20 fail=429 retry_after=1 fail_times=1", 2),
        ("tokens=20 fail=500 fail_times=2", 3),
        ("tokens=20 tps=200 cut_after=5 fail_times=1", 2),
    ],
    ids=["rate-limited", "server-error-twice", "stream-cut"],
)
async def test_retriable_upstream_faults_complete_on_a_later_attempt(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
    directive: str,
    attempts: int,
) -> None:
    await start_streamer(**FAST_RETRIES)
    events = await completes_after_retries(kafka_bootstrap, topic_prefix, producer, directive)
    retrying = [e for e in events if e.type == "job.retrying"]
    assert [e.data.next_attempt for e in retrying] == list(range(2, attempts + 1))
    assert events[-1].data.attempt == attempts
    started = [e.data.attempt for e in events if e.type == "job.started"]
    assert started == list(range(1, attempts + 1))


async def test_rate_limited_retry_waits_for_retry_after(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
) -> None:
    await start_streamer(**FAST_RETRIES)
    events = await completes_after_retries(
        kafka_bootstrap, topic_prefix, producer, "tokens=5 fail=429 retry_after=1 fail_times=1"
    )
    first, second = [e for e in events if e.type == "job.started"]
    assert (second.occurred_at - first.occurred_at).total_seconds() >= 0.95


async def test_a_permanently_failing_job_fails_and_lands_in_the_dlq(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
) -> None:
    await start_streamer(streamer_max_attempts=3, streamer_breaker_failures=100, **FAST_RETRIES)
    job = make_job(f"Doomed {uuid.uuid4()} [[sim fail=500]]")
    await submit(producer, topic_prefix, job)
    events = await events_until_final(kafka_bootstrap, topic_prefix, job.job_id)
    assert events[-1].type == "job.failed"
    assert events[-1].data.attempt == 3
    assert [e.type for e in events].count("job.retrying") == 2
    values = await read_topic(
        kafka_bootstrap,
        dlq_topic(topic_prefix),
        until=lambda vs: any(r.job_id == job.job_id for r in records_of(vs)),
    )
    dead = [r for r in records_of(values, job.job_id) if isinstance(r, JobDeadLettered)]
    assert len(dead) == 1
    assert dead[0].data.attempts == 3
    assert "server_error" in dead[0].data.reason


async def test_a_hung_stream_times_out_on_idle_and_is_retried(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
    fresh_sim: Simulator,
) -> None:
    await start_streamer(streamer_idle_timeout_s=0.5, **FAST_RETRIES)
    events = await completes_after_retries(
        kafka_bootstrap, topic_prefix, producer, "tokens=10 hang_after=3 fail_times=1"
    )
    retrying = [e for e in events if e.type == "job.retrying"]
    assert len(retrying) == 1 and "timeout" in retrying[0].data.reason
    assert fresh_sim.stats.streams_hung == 1


async def test_a_permanently_failing_upstream_opens_the_breaker_and_jobs_are_deferred(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
    fresh_sim: Simulator,
) -> None:
    service = await start_streamer(
        streamer_breaker_failures=2,
        streamer_breaker_cooldown_s=60,
        streamer_max_attempts=10,
        **FAST_RETRIES,
    )
    job = make_job(f"Dead upstream {uuid.uuid4()} [[sim fail=500]]")
    await submit(producer, topic_prefix, job)
    await wait_for(
        lambda: service.metrics.jobs_deferred._value.get() >= 1,
        message="a job was deferred because the breaker opened",
    )
    assert service.deps.upstreams.links["simulator"].breaker.state is BreakerState.OPEN
    assert fresh_sim.stats.requests_total == 2, "no upstream call while the breaker is open"
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{service.port}/metrics") as resp,
    ):
        text = await resp.text()
    assert "streamjobs_streamer_breaker_state{" in text
    assert any(
        line.startswith("streamjobs_streamer_breaker_state{") and line.endswith(" 1.0")
        for line in text.splitlines()
    )
