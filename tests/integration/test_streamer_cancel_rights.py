"""Who may cancel a job (its first-seen owner or an admin), and the bound on remembered cancels."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaProducer

from services.streamer.app import StreamerService
from shared.contracts import CancelJob, CancelJobData, RunJob
from shared.kafka import publish
from shared.topics import control_topic, events_topic, retry_topic
from tests.integration.test_streamer_streaming import (
    StartStreamer,
    chunks_of,
    events_until_final,
    fresh_sim,
    make_job,
    read_topic,
    sim,
    start_streamer,
    submit,
    types_of,
)
from tests.support import wait_for

pytestmark = pytest.mark.kafka
__all__ = ["fresh_sim", "sim", "start_streamer"]  # fixtures shared with streaming

LONG = "[[sim tokens=3000 tps=100]]"


def metric(service: StreamerService, name: str) -> float:
    return service.registry.get_sample_value(name) or 0.0


async def cancel(
    producer: AIOKafkaProducer, prefix: str, job_id: str, user: str, **kw: bool
) -> None:
    await publish(
        producer,
        control_topic(prefix),
        CancelJob(job_id=job_id, data=CancelJobData(user_id=user, **kw)),
    )


@pytest.mark.parametrize(
    ("user", "admin"), [("alice", False), ("root", True)], ids=["owner", "admin"]
)
async def test_a_strangers_cancel_is_ignored_and_the_owners_or_an_admins_obeyed(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
    user: str,
    admin: bool,
) -> None:
    service = await start_streamer()
    job = make_job(f"Long. {LONG}", max_tokens=4000)
    await submit(producer, topic_prefix, job)
    await chunks_of(kafka_bootstrap, topic_prefix, job.job_id, 2)

    await cancel(producer, topic_prefix, job.job_id, "mallory")
    await wait_for(
        lambda: metric(service, "streamjobs_streamer_cancels_ignored_total") == 1,
        message="the stranger's cancel was read and ignored",
    )
    assert job.job_id in service.running, "the job still runs after the stranger's cancel"

    await cancel(producer, topic_prefix, job.job_id, user, admin=admin)
    events = await events_until_final(kafka_bootstrap, topic_prefix, job.job_id)
    assert [e.type for e in events] == ["job.started", "job.cancelled"]


async def test_a_later_record_claiming_another_owner_does_not_let_that_user_cancel(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
) -> None:
    service = await start_streamer()
    first = make_job("Short. [[sim tokens=3]]")
    await submit(producer, topic_prefix, first)
    events = await events_until_final(kafka_bootstrap, topic_prefix, first.job_id)
    assert events[-1].type == "job.completed"

    # The same job id again, now claiming mallory as its owner.
    forged_data = first.data.model_copy(
        update={"user_id": "mallory", "attempt": 2, "prompt": f"Long. {LONG}"}
    )
    forged_data = forged_data.model_copy(
        update={"config": forged_data.config.model_copy(update={"max_tokens": 4000})}
    )
    forged = RunJob(job_id=first.job_id, data=forged_data)
    await publish(producer, retry_topic(topic_prefix), forged)
    await wait_for(
        lambda: first.job_id in service.running, message="the second record's job started"
    )
    assert service.running[first.job_id].owner == "alice"

    await cancel(producer, topic_prefix, first.job_id, "mallory")
    await wait_for(
        lambda: metric(service, "streamjobs_streamer_cancels_ignored_total") == 1,
        message="the claimed owner's cancel was ignored",
    )
    assert first.job_id in service.running
    await cancel(producer, topic_prefix, first.job_id, "alice")
    values = await read_topic(
        kafka_bootstrap,
        events_topic(topic_prefix),
        until=lambda vs: "job.cancelled" in types_of(vs, first.job_id),
        timeout=30,
    )
    assert types_of(values, first.job_id) == [
        "job.started",
        "job.completed",
        "job.started",
        "job.cancelled",
    ]


async def test_remembered_cancels_stay_within_their_bound_and_the_oldest_go_first(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
) -> None:
    service = await start_streamer(streamer_max_remembered_cancels=5)
    jobs = [make_job(f"Later {i}. [[sim tokens=3]]") for i in range(20)]
    for job in jobs:  # cancelled before any of them was submitted
        await cancel(producer, topic_prefix, job.job_id, "alice")
    await wait_for(
        lambda: metric(service, "streamjobs_streamer_remembered_cancels_evicted_total") == 15,
        message="fifteen of twenty remembered cancels evicted",
    )
    assert len(service.cancels) == 5
    assert metric(service, "streamjobs_streamer_remembered_cancels") == 5

    oldest, newest = jobs[0], jobs[-1]
    await submit(producer, topic_prefix, newest)
    await submit(producer, topic_prefix, oldest)
    newest_events = await events_until_final(kafka_bootstrap, topic_prefix, newest.job_id)
    assert [e.type for e in newest_events] == ["job.cancelled"], "its cancel was remembered"
    oldest_events = await events_until_final(kafka_bootstrap, topic_prefix, oldest.job_id)
    assert oldest_events[-1].type == "job.completed", "its cancel had been evicted"
    assert len(service.cancels) == 4


async def test_a_cancel_of_a_job_id_never_seen_is_remembered_whoever_sends_it(
    start_streamer: StartStreamer, producer: AIOKafkaProducer, topic_prefix: str
) -> None:
    # The owner of an unseen job is unknown: the cancel waits for the job to say it.
    service = await start_streamer()
    await cancel(producer, topic_prefix, str(uuid.uuid4()), "mallory")
    await wait_for(lambda: len(service.cancels) == 1, message="the cancel was remembered")
