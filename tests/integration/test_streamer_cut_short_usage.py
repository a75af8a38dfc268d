"""A cancelled or failed attempt reports what it had streamed: model, last seq and usage."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from services.streamer.streamed import estimate_prompt_tokens
from shared.contracts import CancelJob, CancelJobData
from shared.jobtypes import load_job_types
from shared.kafka import publish
from shared.topics import chunks_topic, control_topic
from tests.integration.test_streamer_streaming import (
    StartStreamer,
    chunks_of,
    events_until_final,
    fresh_sim,
    make_job,
    read_topic,
    records_of,
    sim,
    start_streamer,
    submit,
)

pytestmark = pytest.mark.kafka
__all__ = ["fresh_sim", "sim", "start_streamer"]  # fixtures shared with streaming


def streamed_tokens(chunks: list[Any]) -> int:
    return sum(c.data.tokens for c in chunks)


async def test_a_job_cancelled_after_300_tokens_reports_them_as_estimated_usage(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
) -> None:
    await start_streamer()
    job = make_job("A long essay. [[sim tokens=3000 tps=300]]", max_tokens=4000)
    await submit(producer, topic_prefix, job)
    await read_topic(
        kafka_bootstrap,
        chunks_topic(topic_prefix),
        until=lambda vs: streamed_tokens(records_of(vs, job.job_id)) >= 300,
        timeout=30,
    )
    await publish(
        producer,
        control_topic(topic_prefix),
        CancelJob(job_id=job.job_id, data=CancelJobData(user_id="alice")),
    )

    events = await events_until_final(kafka_bootstrap, topic_prefix, job.job_id)
    cancelled = events[-1]
    assert cancelled.type == "job.cancelled"
    data = cancelled.data
    chunks = await chunks_of(kafka_bootstrap, topic_prefix, job.job_id, data.last_seq + 1)
    assert [c.data.seq for c in chunks] == list(range(data.last_seq + 1))
    assert data.model == job.data.config.model
    assert data.usage_estimated
    assert data.usage is not None
    assert data.usage.completion_tokens == streamed_tokens(chunks) >= 300
    assert data.usage.completion_tokens < 3000, "the stream was cut short, not finished"
    assert data.usage.prompt_tokens == estimate_prompt_tokens(job.data, load_job_types()) > 0
    assert data.usage.total_tokens == data.usage.prompt_tokens + data.usage.completion_tokens


async def test_a_failed_attempt_reports_what_it_had_streamed_before_the_cut(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
) -> None:
    await start_streamer(streamer_max_attempts=1, streamer_breaker_failures=100)
    job = make_job("Cut me. [[sim tokens=600 tps=3000 cut_after=300]]", max_tokens=1000)
    await submit(producer, topic_prefix, job)

    events = await events_until_final(kafka_bootstrap, topic_prefix, job.job_id)
    failed = events[-1]
    assert failed.type == "job.failed", events
    data = failed.data
    chunks = await chunks_of(kafka_bootstrap, topic_prefix, job.job_id, data.last_seq + 1)
    assert [c.data.seq for c in chunks] == list(range(data.last_seq + 1))
    assert data.last_seq >= 0
    assert data.model == job.data.config.model
    assert data.usage_estimated and data.usage is not None
    assert data.usage.completion_tokens == streamed_tokens(chunks) == 300
    assert data.usage.prompt_tokens == estimate_prompt_tokens(job.data, load_job_types())
