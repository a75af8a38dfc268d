"""Rate limits and idempotency keys, held across gateway instances through the events topic."""

from __future__ import annotations

import asyncio

import pytest

from shared.contracts import JobCancelled, JobCancelledData, RunJob
from shared.kafka import make_producer, publish
from shared.topics import Priority, events_topic, job_topic
from tests.integration.gateway_harness import (
    GatewayKit,
    kit,
    post_job,
    topic_records,
)
from tests.support import wait_for

pytestmark = pytest.mark.kafka
__all__ = ["kit"]  # fixtures


post = post_job


async def run_jobs(bootstrap: str, prefix: str) -> list[RunJob]:
    records = await topic_records(bootstrap, prefix)
    return [r for band in Priority for r, _ in records[job_topic(band, prefix)]]


async def test_same_key_and_body_is_the_same_job_and_another_body_is_refused(
    kit: GatewayKit,
) -> None:
    start_gateway, tokens, http, kafka_bootstrap, topic_prefix = kit
    gw = await start_gateway()
    alice = tokens("alice")
    body = {"prompt": "once only", "metadata": {"order": 1}}
    first = await post(http, gw.url, alice, body, **{"Idempotency-Key": "order-1"})
    again = await post(http, gw.url, alice, body, **{"Idempotency-Key": "order-1"})
    assert first[0] == again[0] == 202
    assert first[1]["job_id"] == again[1]["job_id"]
    assert first[1]["submitted_at"] == again[1]["submitted_at"]
    assert again[2]["Idempotent-Replayed"] == "true"
    status, problem, _ = await post(
        http, gw.url, alice, {"prompt": "something else"}, **{"Idempotency-Key": "order-1"}
    )
    assert status == 409
    assert problem["type"].endswith("/idempotency-key-reused")
    # Another user's identical key is another job.
    other = await post(http, gw.url, tokens("bob"), body, **{"Idempotency-Key": "order-1"})
    assert other[0] == 202 and other[1]["job_id"] != first[1]["job_id"]
    runs = await run_jobs(kafka_bootstrap, topic_prefix)
    assert sorted(r.job_id for r in runs) == sorted([first[1]["job_id"], other[1]["job_id"]])


async def test_concurrent_requests_with_one_key_publish_one_job(kit: GatewayKit) -> None:
    start_gateway, tokens, http, kafka_bootstrap, topic_prefix = kit
    gw = await start_gateway()
    alice = tokens("alice")
    answers = await asyncio.gather(
        *(post(http, gw.url, alice, {"prompt": "x"}, **{"Idempotency-Key": "k"}) for _ in range(8))
    )
    assert {a[0] for a in answers} == {202}
    assert len({a[1]["job_id"] for a in answers}) == 1
    assert len(await run_jobs(kafka_bootstrap, topic_prefix)) == 1


async def test_an_idempotency_key_holds_across_two_gateway_instances(kit: GatewayKit) -> None:
    start_gateway, tokens, http, kafka_bootstrap, topic_prefix = kit
    one, two = await start_gateway(), await start_gateway()
    alice = tokens("alice")
    body = {"prompt": "pay once", "priority": "urgent"}
    status, first, _ = await post(http, one.url, alice, body, **{"Idempotency-Key": "pay-42"})
    assert status == 202
    await wait_for(lambda: two.view.job(first["job_id"]), message="instance two sees the job")
    status, again, headers = await post(http, two.url, alice, body, **{"Idempotency-Key": "pay-42"})
    assert (status, again["job_id"]) == (202, first["job_id"])
    assert headers["Idempotent-Replayed"] == "true"
    status, problem, _ = await post(
        http, two.url, alice, {"prompt": "pay twice"}, **{"Idempotency-Key": "pay-42"}
    )
    assert status == 409
    assert problem["job_id"] == first["job_id"]
    # A restarted instance reads it back from the events topic too.
    three = await start_gateway()
    status, later, _ = await post(http, three.url, alice, body, **{"Idempotency-Key": "pay-42"})
    assert (status, later["job_id"]) == (202, first["job_id"])
    runs = await run_jobs(kafka_bootstrap, topic_prefix)
    assert [r.job_id for r in runs] == [first["job_id"]]


async def test_submissions_per_minute_limit_answers_429_with_retry_after(kit: GatewayKit) -> None:
    start_gateway, tokens, http, kafka_bootstrap, topic_prefix = kit
    gw = await start_gateway(gateway_submissions_per_minute=3, gateway_max_in_flight=0)
    alice = tokens("alice")
    for _ in range(3):
        assert (await post(http, gw.url, alice, {"prompt": "x"}))[0] == 202
    status, problem, headers = await post(http, gw.url, alice, {"prompt": "x"})
    assert status == 429
    assert problem["type"].endswith("/rate-limit-submissions-per-minute")
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert (await post(http, gw.url, tokens("bob"), {"prompt": "x"}))[0] == 202
    assert len(await run_jobs(kafka_bootstrap, topic_prefix)) == 4


async def test_jobs_in_flight_limit_holds_across_instances_until_a_job_ends(
    kit: GatewayKit,
) -> None:
    start_gateway, tokens, http, kafka_bootstrap, topic_prefix = kit
    limits = {"gateway_submissions_per_minute": 0, "gateway_max_in_flight": 2}
    one, two = await start_gateway(**limits), await start_gateway(**limits)
    alice = tokens("alice")
    ids = [(await post(http, one.url, alice, {"prompt": "x"}))[1]["job_id"] for _ in range(2)]
    await wait_for(lambda: two.view.in_flight("alice") == 2, message="instance two counts both")
    status, problem, headers = await post(http, two.url, alice, {"prompt": "x"})
    assert status == 429
    assert problem["type"].endswith("/rate-limit-jobs-in-flight")
    assert int(headers["Retry-After"]) >= 1

    producer = make_producer(kafka_bootstrap)
    await producer.start()
    try:
        await publish(
            producer,
            events_topic(topic_prefix),
            JobCancelled(job_id=ids[0], data=JobCancelledData(attempt=0)),
        )
    finally:
        await producer.stop()
    await wait_for(lambda: two.view.in_flight("alice") == 1, message="instance two sees the end")
    assert (await post(http, two.url, alice, {"prompt": "x"}))[0] == 202
    assert len(await run_jobs(kafka_bootstrap, topic_prefix)) == 3
