"""Over the real broker: job topics stamp records with the broker's append time, and a first
attempt appended after its `accept_by` is not run while its offset moves on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from services.streamer.intake import LOG_APPEND_TIME
from shared.contracts import RunJob
from shared.topics import Priority, events_topic, job_topic, job_topics, retry_topic
from tests.integration.test_streamer_rejects import committed, metric
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

LATE = "streamjobs_streamer_jobs_appended_late_total"


def with_accept_by(job: RunJob, accept_by: datetime) -> RunJob:
    return job.model_copy(update={"data": job.data.model_copy(update={"accept_by": accept_by})})


async def test_job_topics_are_created_with_the_brokers_append_time(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        names = [*job_topics(topic_prefix), retry_topic(topic_prefix), events_topic(topic_prefix)]
        described = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
    finally:
        await admin.close()
    types: dict[str, str] = {}
    for response in described:
        for _code, _message, _type, name, entries in response.resources:
            for entry in entries:
                if entry[0] == "message.timestamp.type":
                    types[name] = entry[1]
    assert types == {
        **{name: "LogAppendTime" for name in names[:-1]},
        events_topic(topic_prefix): "CreateTime",
    }


async def test_a_job_appended_after_its_accept_by_is_not_run_and_its_offset_committed(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
) -> None:
    service = await start_streamer()
    now = datetime.now(UTC)
    late = with_accept_by(make_job("Too late. [[sim tokens=3]]"), now - timedelta(seconds=30))
    # Acknowledged in time: appended well before its deadline, it runs.
    kept = with_accept_by(make_job("In time. [[sim tokens=3]]"), now + timedelta(seconds=30))
    await submit(producer, topic_prefix, late)
    await submit(producer, topic_prefix, kept)

    events = await events_until_final(kafka_bootstrap, topic_prefix, kept.job_id)
    assert [e.type for e in events] == ["job.started", "job.completed"]

    topic = job_topic(Priority.NORMAL, topic_prefix)
    records = await read_topic(kafka_bootstrap, topic, until=lambda vs: len(vs) >= 2)
    assert {r.job_id for r in records_of(records)} == {late.job_id, kept.job_id}

    async def both_committed() -> bool:
        total = 0
        for partition in range(4):
            total += max(0, await committed(service, TopicPartition(topic, partition)))
        return total == 2

    await wait_for(both_committed, timeout=20, message="both offsets committed")
    assert metric(service, LATE) == 1
    values = await read_topic(
        kafka_bootstrap,
        events_topic(topic_prefix),
        until=lambda vs: any(r.job_id == kept.job_id for r in records_of(vs)),
    )
    assert records_of(values, late.job_id) == []


async def test_records_on_a_job_topic_carry_the_log_append_time_type(
    kafka_bootstrap: str, topic_prefix: str, producer: AIOKafkaProducer
) -> None:
    from aiokafka import AIOKafkaConsumer

    job = make_job("Stamped. [[sim tokens=1]]", priority=Priority.URGENT)
    await submit(producer, topic_prefix, job)
    consumer = AIOKafkaConsumer(
        job_topic(Priority.URGENT, topic_prefix),
        bootstrap_servers=kafka_bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        record = await consumer.getone()
    finally:
        await consumer.stop()
    assert record.timestamp_type == LOG_APPEND_TIME
