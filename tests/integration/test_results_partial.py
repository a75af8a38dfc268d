"""A failed or cancelled job keeps what its last attempt streamed: text, tokens and cost.

And its owner is the one its first job.accepted named, whatever comes later."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from services.results.app import ResultsService
from shared.contracts import (
    JobAccepted,
    JobCancelled,
    JobCancelledData,
    JobFailed,
    JobFailedData,
    LifecycleEvent,
    TokenUsage,
)
from shared.kafka import publish
from shared.prices import Usage, cost_usd, load_prices
from shared.topics import chunks_topic, events_topic
from tests.integration.results_kit import (
    T0,
    JobScript,
    Reader,
    caught_up,
    count,
    job_script,
    publish_script,
    running,
    settings_for,
)
from tests.support import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

TEXTS = ("The ", "answer ", "was ", "half")
END = T0 + timedelta(seconds=3)


@pytest.fixture
async def service(
    kafka_bootstrap: str, topic_prefix: str, database_url: str, auth_secret: str
) -> AsyncIterator[ResultsService]:
    settings = settings_for(kafka_bootstrap, topic_prefix, database_url, auth_secret)
    async with running(settings) as svc:
        yield svc


@pytest.fixture
async def admin(service: ResultsService, auth_secret: str) -> AsyncIterator[Reader]:
    async with aiohttp.ClientSession() as http:
        yield Reader(http, f"http://127.0.0.1:{service.port}", auth_secret, "root", "admin")


def ended(job_id: str, final: LifecycleEvent | None = None) -> JobScript:
    """A job that streamed TEXTS (one token each) and then ended with `final`."""
    script = job_script(job_id, texts=TEXTS, outcome="running")
    if final is not None:
        script.events.append(final)
    return script


def cost(model: str, prompt: int, completion: int) -> float:
    price = load_prices().price_of(model)
    assert price is not None
    return float(cost_usd(price, Usage(prompt, completion)))


async def store(
    service: ResultsService, producer: AIOKafkaProducer, prefix: str, *s: JobScript
) -> None:
    for script in s:
        await publish_script(producer, prefix, script)
    await wait_for(lambda: caught_up(service), message="records not written")


async def test_cancelled_job_keeps_streamed_text_and_the_reported_usage_and_cost(
    service: ResultsService, producer: AIOKafkaProducer, topic_prefix: str, admin: Reader
) -> None:
    usage = TokenUsage(prompt_tokens=40, completion_tokens=300, total_tokens=340)
    cancel = JobCancelled(
        job_id="c1",
        occurred_at=END,
        data=JobCancelledData(attempt=1, last_seq=3, model="gpt-4o", usage=usage),
    )
    await store(service, producer, topic_prefix, ended("c1", cancel))
    status, body = await admin.get("/jobs/c1/result")
    assert status == 200, body
    assert body["status"] == "cancelled"
    assert body["response"] == "".join(TEXTS)
    assert body["usage"] == usage.model_dump()
    assert body["usage_estimated"] is False
    assert body["estimated_cost_usd"] == pytest.approx(cost("gpt-4o", 40, 300))
    assert body["estimated_cost_usd"] > 0
    assert body["chunks"] == len(TEXTS)


async def test_cancelled_job_without_usage_counts_the_stored_chunks_as_estimated(
    service: ResultsService, producer: AIOKafkaProducer, topic_prefix: str, admin: Reader
) -> None:
    cancel = JobCancelled(job_id="c2", occurred_at=END, data=JobCancelledData(attempt=1))
    await store(service, producer, topic_prefix, ended("c2", cancel))
    status, body = await admin.get("/jobs/c2/result")
    assert status == 200, body
    assert body["response"] == "".join(TEXTS)
    assert body["usage"] == {
        "prompt_tokens": 0,
        "completion_tokens": len(TEXTS),
        "total_tokens": len(TEXTS),
        "cached_tokens": None,  # counted from chunks: no upstream details
        "reasoning_tokens": None,
    }
    assert body["usage_estimated"] is True
    assert body["estimated_cost_usd"] == pytest.approx(cost("gpt-4o-mini", 0, len(TEXTS)))


async def test_failed_job_keeps_its_partial_text_and_usage_given_or_counted(
    service: ResultsService, producer: AIOKafkaProducer, topic_prefix: str, admin: Reader
) -> None:
    streamer_counted = TokenUsage(prompt_tokens=12, completion_tokens=4, total_tokens=16)
    with_usage = JobFailed(
        job_id="f1",
        occurred_at=END,
        data=JobFailedData(
            attempt=1,
            reason="stream dropped",
            error_type="UpstreamDropped",
            last_seq=3,
            model="gpt-4o-mini",
            usage=streamer_counted,
            usage_estimated=True,
        ),
    )
    without = JobFailed(
        job_id="f2",
        occurred_at=END,
        data=JobFailedData(attempt=1, reason="stream dropped", error_type="UpstreamDropped"),
    )
    await store(service, producer, topic_prefix, ended("f1", with_usage), ended("f2", without))
    status, body = await admin.get("/jobs/f1/result")
    assert status == 200, body
    assert (body["status"], body["response"]) == ("failed", "".join(TEXTS))
    assert body["usage"] == streamer_counted.model_dump()
    assert body["usage_estimated"] is True  # as the streamer said
    assert body["estimated_cost_usd"] == pytest.approx(cost("gpt-4o-mini", 12, 4))
    status, body = await admin.get("/jobs/f2/result")
    assert body["response"] == "".join(TEXTS)
    assert body["usage"]["completion_tokens"] == len(TEXTS)
    assert body["usage_estimated"] is True


async def test_chunks_arriving_after_the_cancel_join_the_partial_result(
    service: ResultsService, producer: AIOKafkaProducer, topic_prefix: str, admin: Reader
) -> None:
    # Chunks and events travel on different topics: the final fact may be stored first.
    cancel = JobCancelled(job_id="late", occurred_at=END, data=JobCancelledData(attempt=1))
    script = ended("late", cancel)
    for event in script.events:
        await publish(producer, events_topic(topic_prefix), event)
    await publish(producer, chunks_topic(topic_prefix), script.chunks[0])
    await wait_for(lambda: caught_up(service), message="events not written")
    status, body = await admin.get("/jobs/late/result")
    assert (status, body["response"]) == (200, TEXTS[0])
    for chunk in script.chunks[1:]:
        await publish(producer, chunks_topic(topic_prefix), chunk)
    await wait_for(lambda: caught_up(service), message="late chunks not written")
    status, body = await admin.get("/jobs/late/result")
    assert status == 200, body
    _, snapshot = await admin.get("/jobs/late/stream")
    assert body["response"] == snapshot["text"] == "".join(TEXTS)
    assert body["usage"]["completion_tokens"] == snapshot["tokens"] == len(TEXTS)


async def test_a_second_accepted_fact_never_changes_the_owner(
    service: ResultsService,
    producer: AIOKafkaProducer,
    topic_prefix: str,
    auth_secret: str,
    database_url: str,
) -> None:
    script = job_script("owned", user="alice")
    takeover = JobAccepted(
        job_id="owned",
        data=script.accepted.data.model_copy(update={"user_id": "mallory", "prompt": "mine"}),
    )
    await store(service, producer, topic_prefix, script)
    await publish(producer, events_topic(topic_prefix), takeover)
    await wait_for(lambda: caught_up(service), message="takeover not read")
    assert service.metrics.owner_changes_refused._value.get() == 1
    base = f"http://127.0.0.1:{service.port}"
    async with aiohttp.ClientSession() as http:
        alice = Reader(http, base, auth_secret, "alice")
        mallory = Reader(http, base, auth_secret, "mallory")
        status, body = await alice.get("/jobs/owned")
        assert (status, body["user_id"]) == (200, "alice")
        status, _ = await mallory.get("/jobs/owned")
        assert status == 404
        status, body = await mallory.get("/jobs")
        assert body["items"] == []
    # The refused fact is kept (a replay of it is recognised) but marked as not applied.
    refused = "SELECT count(*) FROM events WHERE job_id = 'owned' AND NOT applied"
    assert await count(database_url, refused) == 1
    assert await count(database_url, "SELECT count(*) FROM jobs WHERE prompt = 'mine'") == 0
