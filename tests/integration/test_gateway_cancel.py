"""Cancelling through the gateway over the real Kafka broker: ownership, idempotency, states."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from shared.contracts import CancelJob, JobCompleted, JobCompletedData, JobFailed, TokenUsage
from shared.kafka import make_producer, publish
from shared.lifecycle import JobStatus
from shared.topics import control_topic, events_topic
from tests.integration.gateway_harness import (
    GatewayKit,
    bearer,
    kit,
    topic_records,
)
from tests.support import wait_for

pytestmark = pytest.mark.kafka
__all__ = ["kit"]  # fixtures


async def submit(http: aiohttp.ClientSession, url: str, token: str, **body: Any) -> str:
    async with http.post(
        f"{url}/api/v1/jobs", json={"prompt": "p", **body}, headers=bearer(token)
    ) as resp:
        assert resp.status == 202, await resp.text()
        job_id: str = (await resp.json())["job_id"]
        return job_id


async def cancel(
    http: aiohttp.ClientSession, url: str, token: str, job_id: str
) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{url}/api/v1/jobs/{job_id}/cancel", headers=bearer(token)) as resp:
        return resp.status, await resp.json()


async def test_cancel_publishes_a_cancel_job_and_a_repeat_answers_the_same(kit: GatewayKit) -> None:
    start_gateway, tokens, http, kafka_bootstrap, topic_prefix = kit
    gw = await start_gateway()
    alice = tokens("alice")
    job_id = await submit(http, gw.url, alice)
    first = await cancel(http, gw.url, alice, job_id)
    second = await cancel(http, gw.url, alice, job_id)
    assert first == second == (202, {"job_id": job_id, "status": "queued"})
    records = await topic_records(kafka_bootstrap, topic_prefix)
    commands = [r for r, _ in records[control_topic(topic_prefix)]]
    assert commands and all(isinstance(c, CancelJob) for c in commands)
    assert {(c.job_id, c.data.user_id, c.data.admin) for c in commands} == {
        (job_id, "alice", False)
    }


async def test_another_users_cancel_is_not_found_and_publishes_nothing(kit: GatewayKit) -> None:
    start_gateway, tokens, http, kafka_bootstrap, topic_prefix = kit
    gw = await start_gateway()
    job_id = await submit(http, gw.url, tokens("alice"))
    status, body = await cancel(http, gw.url, tokens("bob"), job_id)
    assert status == 404
    assert body["type"].endswith("/job-not-found")
    records = await topic_records(kafka_bootstrap, topic_prefix)
    assert records[control_topic(topic_prefix)] == []


async def test_an_admin_may_cancel_anyones_job(kit: GatewayKit) -> None:
    start_gateway, tokens, http, kafka_bootstrap, topic_prefix = kit
    gw = await start_gateway()
    job_id = await submit(http, gw.url, tokens("alice"))
    status, _ = await cancel(http, gw.url, tokens("root", ("admin",)), job_id)
    assert status == 202
    records = await topic_records(kafka_bootstrap, topic_prefix)
    ((command, _),) = records[control_topic(topic_prefix)]
    assert (command.data.user_id, command.data.admin) == ("root", True)


async def test_cancelling_a_finished_job_is_a_conflict_and_a_cancelled_one_is_accepted(
    kit: GatewayKit,
) -> None:
    start_gateway, tokens, http, kafka_bootstrap, topic_prefix = kit
    gw = await start_gateway()
    alice = tokens("alice")
    done, failed = await submit(http, gw.url, alice), await submit(http, gw.url, alice)
    producer = make_producer(kafka_bootstrap)
    await producer.start()
    try:
        await publish(
            producer,
            events_topic(topic_prefix),
            JobCompleted(
                job_id=done,
                data=JobCompletedData(
                    attempt=1,
                    response="r",
                    model="m",
                    usage=TokenUsage(),
                    chunks=1,
                    last_seq=0,
                    duration_ms=1.0,
                ),
            ),
        )
        await publish(
            producer,
            events_topic(topic_prefix),
            JobFailed(job_id=failed, data={"attempt": 1, "reason": "x", "error_type": "E"}),
        )
    finally:
        await producer.stop()

    def finished() -> bool:
        a, b = gw.view.job(done), gw.view.job(failed)
        return bool(a and b and a.status.is_final and b.status.is_final)

    await wait_for(finished, message="the gateway's view sees both final events")
    for job_id, status in ((done, JobStatus.COMPLETED), (failed, JobStatus.FAILED)):
        code, body = await cancel(http, gw.url, alice, job_id)
        assert code == 409
        assert body["type"].endswith("/job-finished")
        assert body["status_of_job"] == status.value
    records = await topic_records(kafka_bootstrap, topic_prefix)
    assert records[control_topic(topic_prefix)] == []


async def test_cancel_of_a_job_the_view_does_not_know_needs_the_read_side(kit: GatewayKit) -> None:
    start_gateway, tokens, http, *_ = kit
    gw = await start_gateway()  # no results service listens at its results_url
    status, body = await cancel(http, gw.url, tokens("alice"), "f" * 32)
    assert status == 503
    assert body["type"].endswith("/results-unavailable")


async def test_a_second_gateway_knows_the_owner_from_the_events_topic(kit: GatewayKit) -> None:
    start_gateway, tokens, http, *_ = kit
    one, two = await start_gateway(), await start_gateway()
    job_id = await submit(http, one.url, tokens("alice"))
    await wait_for(lambda: two.view.job(job_id), message="the second gateway sees the job")
    assert (await cancel(http, two.url, tokens("bob"), job_id))[0] == 404
    assert (await cancel(http, two.url, tokens("alice"), job_id))[0] == 202
