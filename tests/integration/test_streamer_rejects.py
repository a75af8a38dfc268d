"""Records the streamer cannot run or obey: dead-lettered, the owner told, the consumers go on."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaTimeoutError

from services.streamer.app import StreamerService
from shared.contracts import CancelJob, CancelJobData, JobDeadLettered, JobFailed
from shared.kafka import publish
from shared.topics import Priority, control_topic, dlq_topic, events_topic, job_topic
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
from tests.support import wait_for

pytestmark = pytest.mark.kafka
__all__ = ["fresh_sim", "sim", "start_streamer"]  # fixtures shared with streaming

FAST_RETRIES: dict[str, Any] = {"streamer_retry_base_s": 0.05, "streamer_retry_max_s": 0.2}


class FlakyProducer:
    """The real producer, except that sends to `topic` raise while `failures` remain.

    Stands for a broker that briefly cannot take records for that topic.
    """

    def __init__(self, real: AIOKafkaProducer, topic: str, failures: int) -> None:
        self.real = real
        self.topic = topic
        self.failures = failures
        self.refused = 0

    async def send_and_wait(self, topic: str, *args: Any, **kwargs: Any) -> Any:
        if topic == self.topic and self.failures > 0:
            self.failures -= 1
            self.refused += 1
            raise KafkaTimeoutError("the broker did not answer")
        return await self.real.send_and_wait(topic, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def dead_letters(values: list[bytes]) -> list[JobDeadLettered]:
    return [r for r in records_of(values) if isinstance(r, JobDeadLettered)]


def failures(values: list[bytes]) -> dict[str, JobFailed]:
    return {r.job_id: r for r in records_of(values) if isinstance(r, JobFailed)}


async def committed(service: StreamerService, tp: TopicPartition) -> int:
    offsets = await service._admin.list_consumer_group_offsets(
        service.settings.streamer_group_id, partitions=[tp]
    )
    meta = offsets.get(tp)
    return meta.offset if meta is not None else -1


def metric(service: StreamerService, name: str, **labels: str) -> float:
    return service.registry.get_sample_value(name, labels) or 0.0


async def test_a_record_dead_lettered_at_intake_also_fails_its_job_for_its_owner(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
) -> None:
    service = await start_streamer()
    topic = job_topic(Priority.HIGH, topic_prefix)
    keyed = str(uuid.uuid4())
    from_json = str(uuid.uuid4())
    naive = make_job("Naive time.").model_dump(mode="json")
    naive["data"]["submitted_at"] = "2026-12-01T10:00:00"  # no time zone: cannot be run
    await producer.send_and_wait(topic, b"\xffnot json", key=keyed.encode())
    await producer.send_and_wait(
        topic, json.dumps({"type": "job.run", "job_id": from_json, "data": {}}).encode()
    )
    await producer.send_and_wait(topic, json.dumps(naive).encode(), key=naive["job_id"].encode())
    await producer.send_and_wait(topic, b"\x00\x01 nothing to go by")

    events = await read_topic(
        kafka_bootstrap,
        events_topic(topic_prefix),
        until=lambda vs: {keyed, from_json, naive["job_id"]} <= set(failures(vs)),
    )
    failed = failures(events)
    assert failed[keyed].data.error_type == "ValidationError"
    assert failed[from_json].data.reason.startswith("rejected at intake: invalid record")
    assert failed[naive["job_id"]].data.error_type == "Unrunnable"
    assert "time zone" in failed[naive["job_id"]].data.reason
    assert all(not f.data.retriable for f in failed.values())

    dlq = await read_topic(
        kafka_bootstrap, dlq_topic(topic_prefix), until=lambda vs: len(dead_letters(vs)) >= 4
    )
    dead = dead_letters(dlq)
    assert {d.job_id for d in dead} == {keyed, from_json, naive["job_id"], "unknown"}
    assert all(d.data.source_topic == topic and d.data.reason for d in dead)
    await wait_for(
        lambda: metric(service, "streamjobs_streamer_rejected_without_job_id_total") == 1,
        message="the record with no job id was counted",
    )


@pytest.mark.parametrize("failing", ["dlq", "events"])
async def test_kafka_errors_while_dead_lettering_are_retried_and_no_record_is_skipped(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
    failing: str,
) -> None:
    service = await start_streamer(**FAST_RETRIES)
    topic_of = {"dlq": dlq_topic, "events": events_topic}
    flaky = FlakyProducer(service.rejects.producer, topic_of[failing](topic_prefix), failures=3)
    service.rejects.producer = flaky  # type: ignore[assignment]
    topic = job_topic(Priority.NORMAL, topic_prefix)
    bad = [str(uuid.uuid4()) for _ in range(2)]
    good = [make_job(f"Good {i} [[sim tokens=5]]") for i in range(2)]
    # One partition, bad and good interleaved: the commit must pass each in order.
    for bad_id, job in zip(bad, good, strict=True):
        await producer.send_and_wait(topic, b"{broken", key=bad_id.encode(), partition=0)
        await producer.send_and_wait(topic, job.to_bytes(), key=job.job_id.encode(), partition=0)

    for job in good:
        events = await events_until_final(kafka_bootstrap, topic_prefix, job.job_id)
        assert events[-1].type == "job.completed"
    values = await read_topic(
        kafka_bootstrap, events_topic(topic_prefix), until=lambda vs: set(bad) <= set(failures(vs))
    )
    assert set(bad) <= set(failures(values))
    dlq = await read_topic(
        kafka_bootstrap,
        dlq_topic(topic_prefix),
        until=lambda vs: set(bad) <= {d.job_id for d in dead_letters(vs)},
    )
    assert sorted(d.data.source_offset or 0 for d in dead_letters(dlq)) == [0, 2]
    assert flaky.refused == 3
    tp = TopicPartition(topic, 0)
    await wait_for(
        lambda: _committed_is(service, tp, 4),
        message="the commit passed every record of the partition",
    )
    assert not any(task.done() for task in service._background._tasks), "a loop ended"


async def _committed_is(service: StreamerService, tp: TopicPartition, offset: int) -> bool:
    return await committed(service, tp) == offset


async def test_the_intake_waits_on_a_dead_letter_it_cannot_write_and_commits_nothing_past_it(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
) -> None:
    service = await start_streamer(**FAST_RETRIES)
    flaky = FlakyProducer(service.rejects.producer, dlq_topic(topic_prefix), failures=10**6)
    service.rejects.producer = flaky  # type: ignore[assignment]
    topic = job_topic(Priority.NORMAL, topic_prefix)
    tp = TopicPartition(topic, 0)
    bad_id = str(uuid.uuid4())
    good = make_job("After the outage [[sim tokens=5]]")
    await producer.send_and_wait(topic, b"{broken", key=bad_id.encode(), partition=0)
    await producer.send_and_wait(topic, good.to_bytes(), key=good.job_id.encode(), partition=0)

    await wait_for(lambda: flaky.refused >= 3, message="the dead letter was tried again")
    assert await committed(service, tp) <= 0, "the commit moved past an unwritten dead letter"
    flaky.failures = 0  # the broker takes records again

    events = await events_until_final(kafka_bootstrap, topic_prefix, good.job_id)
    assert events[-1].type == "job.completed"
    values = await read_topic(
        kafka_bootstrap, events_topic(topic_prefix), until=lambda vs: bad_id in failures(vs)
    )
    assert failures(values)[bad_id].data.error_type == "ValidationError"
    await wait_for(lambda: _committed_is(service, tp, 2), message="the commit passed both records")


async def test_unreadable_control_records_are_skipped_counted_and_dead_lettered(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
) -> None:
    service = await start_streamer()
    job = make_job("Cancel me later. [[sim tokens=2000 tps=50]]", max_tokens=4000)
    await submit(producer, topic_prefix, job)
    await chunks_of(kafka_bootstrap, topic_prefix, job.job_id, 2)

    control = control_topic(topic_prefix)
    await producer.send_and_wait(control, b"\xff\xfe garbage", key=job.job_id.encode())
    await producer.send_and_wait(control, b'{"type": "job.cancel", "job_id": 7, "data": 1}')
    await producer.send_and_wait(control, make_job("Not a command.").to_bytes())
    await producer.send_and_wait(control, b"[" * 50_000)
    await publish(
        producer, control, CancelJob(job_id=job.job_id, data=CancelJobData(user_id="alice"))
    )

    events = await events_until_final(kafka_bootstrap, topic_prefix, job.job_id)
    assert events[-1].type == "job.cancelled", "the cancel behind the bad records was obeyed"
    dlq = await read_topic(
        kafka_bootstrap,
        dlq_topic(topic_prefix),
        until=lambda vs: len([d for d in dead_letters(vs) if d.data.source_topic == control]) >= 4,
    )
    dead = [d for d in dead_letters(dlq) if d.data.source_topic == control]
    assert len(dead) == 4
    assert {d.data.error_type for d in dead} == {"ValidationError", "WrongType"}
    assert job.job_id in {d.job_id for d in dead}
    skipped = sum(
        metric(service, "streamjobs_streamer_control_records_skipped_total", reason=r)
        for r in ("ValidationError", "WrongType")
    )
    assert skipped == 4
    assert not any(task.done() for task in service._background._tasks), "a loop ended"
