"""Graceful stop and a hard kill: no job is lost, a rerun is the next attempt."""

from __future__ import annotations

import signal
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from services.streamer.app import StreamerService
from shared.topics import chunks_topic, events_topic
from tests.integration.test_streamer_rebalance import Fleet, fleet
from tests.integration.test_streamer_streaming import (
    FINAL,
    StartStreamer,
    events_until_final,
    fresh_sim,
    make_job,
    read_topic,
    records_of,
    sim,
    start_streamer,
    submit,
    types_of,
)

pytestmark = pytest.mark.kafka
# Fixtures shared with the streaming and rebalance tests.
__all__ = ["fleet", "fresh_sim", "sim", "start_streamer"]


def of_attempt(values: list[bytes], job_id: str, attempt: int) -> list[Any]:
    return sorted(
        (c for c in records_of(values, job_id) if c.data.attempt == attempt),
        key=lambda c: c.data.seq,
    )


async def wait_started(bootstrap: str, prefix: str, job_id: str) -> None:
    await read_topic(
        bootstrap,
        chunks_topic(prefix),
        until=lambda vs: len(records_of(vs, job_id)) >= 2,
        timeout=30,
    )


async def test_stop_lets_a_short_running_job_finish_within_the_grace_period(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
) -> None:
    service = await start_streamer(streamer_grace_s=10)
    job = make_job(f"Finish me {uuid.uuid4()} [[sim tokens=40 tps=40]]")
    await submit(producer, topic_prefix, job)
    await wait_started(kafka_bootstrap, topic_prefix, job.job_id)
    await service.stop()
    events = await events_until_final(kafka_bootstrap, topic_prefix, job.job_id)
    assert events[-1].type == "job.completed"


async def test_stop_cuts_a_long_job_without_final_event_and_a_successor_reruns_it(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
) -> None:
    first: StreamerService = await start_streamer(streamer_grace_s=0.2)
    job = make_job(f"Long {uuid.uuid4()} [[sim tokens=300 tps=100]]")
    await submit(producer, topic_prefix, job)
    await wait_started(kafka_bootstrap, topic_prefix, job.job_id)
    await first.stop()

    await start_streamer()
    events = await events_until_final(kafka_bootstrap, topic_prefix, job.job_id)
    types = [e.type for e in events]
    assert types == ["job.started", "job.started", "job.completed"]
    completed = events[-1].data
    assert completed.attempt == 2
    values = await read_topic(
        kafka_bootstrap,
        chunks_topic(topic_prefix),
        until=lambda vs: len(of_attempt(vs, job.job_id, 2)) >= completed.chunks,
    )
    final = of_attempt(values, job.job_id, 2)
    assert [c.data.seq for c in final] == list(range(completed.chunks))
    assert "".join(c.data.text for c in final) == completed.response


async def test_kill_9_mid_stream_job_completes_on_the_other_instance_as_attempt_2(
    kafka_bootstrap: str, topic_prefix: str, producer: AIOKafkaProducer, fleet: Fleet
) -> None:
    await fleet.start("w1")
    await fleet.start("w2")
    job = make_job(f"Kill me {uuid.uuid4()} [[sim tokens=400 tps=100]]")
    await submit(producer, topic_prefix, job)
    values = await read_topic(
        kafka_bootstrap,
        events_topic(topic_prefix),
        until=lambda vs: "job.started" in types_of(vs, job.job_id),
    )
    worker = records_of(values, job.job_id)[0].data.worker
    await wait_started(kafka_bootstrap, topic_prefix, job.job_id)
    assert await fleet.signal(worker, signal.SIGKILL) == -signal.SIGKILL

    values = await read_topic(
        kafka_bootstrap,
        events_topic(topic_prefix),
        until=lambda vs: any(t in FINAL for t in types_of(vs, job.job_id)),
        timeout=60,
    )
    events = records_of(values, job.job_id)
    completed = events[-1]
    assert completed.type == "job.completed"
    assert completed.data.attempt == 2
    survivor = next(n for n in fleet.procs if n != worker)
    assert events[-2].type == "job.started" and events[-2].data.worker == survivor
    values = await read_topic(
        kafka_bootstrap,
        chunks_topic(topic_prefix),
        until=lambda vs: len(of_attempt(vs, job.job_id, 2)) >= completed.data.chunks,
    )
    final = of_attempt(values, job.job_id, 2)
    assert [c.data.seq for c in final] == list(range(completed.data.chunks))
    assert "".join(c.data.text for c in final) == completed.data.response
    assert sum(c.data.tokens for c in final) == 400
