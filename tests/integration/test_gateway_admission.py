"""Exact admission across two gateway instances on the session broker: one owner per user's
admission partition decides limits and Idempotency-Keys, whichever gateway was asked."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter, defaultdict
from collections.abc import Awaitable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.gateway.admission_link import KafkaAdmissionLink
from services.gateway.admission_records import admissions_topic, decisions_topic
from services.gateway.app import GatewayService
from shared.kafka import assign_every_partition
from shared.routing import chunk_partition, notifier_for
from shared.topics import Priority, control_topic, job_topic
from tests.integration.gateway_harness import (
    ADMISSION_PARTITIONS,
    GatewayKit,
    StartGateway,
    bearer,
    gateway_process,
    kit,
    post_job,
    topic_records,
)
from tests.support import wait_for

pytestmark = pytest.mark.kafka
__all__ = ["kit"]  # fixtures

PARTITIONS = ADMISSION_PARTITIONS


async def post(
    http: aiohttp.ClientSession, url: str, token: str, body: dict[str, Any], **headers: str
) -> tuple[int, dict[str, Any]]:
    status, answer, _ = await post_job(http, url, token, body, **headers)
    return status, answer


async def run_job_ids(bootstrap: str, prefix: str) -> list[str]:
    """The job id of every committed RunJob record on every band's topic."""
    records = await topic_records(bootstrap, prefix)
    return [r.job_id for band in Priority for r, _ in records[job_topic(band, prefix)]]


async def committed_values(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every committed record of `topic` as JSON, partition after partition, in offset order."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        tps = sorted(await assign_every_partition(consumer, [topic]))
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[dict[str, Any]] = []
        for tp in tps:
            while await consumer.position(tp) < ends[tp]:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                out.extend(json.loads(r.value or b"") for r in batch.get(tp, []))
        return out
    finally:
        await consumer.stop()


async def decided_requests(bootstrap: str, prefix: str) -> list[dict[str, Any]]:
    """Every committed decision, in partition order."""
    return await committed_values(bootstrap, decisions_topic(prefix))


async def requests_appended(bootstrap: str, prefix: str) -> int:
    """How many admission requests the admission topic holds."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await assign_every_partition(consumer, [admissions_topic(prefix)])
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


async def two_gateways(start: StartGateway, **settings: Any) -> tuple[GatewayService, ...]:
    one = await start(**settings)
    two = await start(**settings)
    # Both in the group, each deciding its share.
    await wait_for(
        lambda: (
            one.owner is not None
            and two.owner is not None
            and len(one.owner.owned) + len(two.owner.owned) == PARTITIONS
            and one.owner.owned
            and two.owner.owned
        ),
        timeout=30,
        message="the admission partitions shared by both gateways",
    )
    return one, two


def hold_commits(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Every transaction's commit waits until the event returned is set."""
    released = asyncio.Event()
    commit = AIOKafkaProducer.commit_transaction

    async def held_commit(producer: AIOKafkaProducer) -> None:
        await released.wait()
        await commit(producer)

    monkeypatch.setattr(AIOKafkaProducer, "commit_transaction", held_commit)
    return released


async def assert_each_acceptance_once(
    answers: list[tuple[int, dict[str, Any]]], bootstrap: str, prefix: str
) -> None:
    """No request decided twice; the jobs accepted are the 202s, each with one job.run."""
    decisions = await decided_requests(bootstrap, prefix)
    ids = [d["request_id"] for d in decisions]
    assert len(ids) == len(set(ids)), "no request decided twice"
    accepted = sorted(b["job_id"] for s, b in answers if s == 202)
    assert sorted(d["job_id"] for d in decisions if d["outcome"] == "accepted") == accepted
    assert sorted(await run_job_ids(bootstrap, prefix)) == accepted


def decided(gateway: GatewayService, outcome: str) -> float:
    """How many requests `gateway` decided with `outcome`, from its metrics."""
    value = gateway.registry.get_sample_value(
        "streamjobs_gateway_admission_decisions_total", {"outcome": outcome}
    )
    return value or 0.0


def user_owned_by(gateway: GatewayService, prefix: str) -> str:
    """A user id whose admission partition `gateway` owns."""
    assert gateway.owner is not None
    owned = set(gateway.owner.owned)
    return next(
        f"{prefix}-user-{n}"
        for n in range(1000)
        if chunk_partition(f"{prefix}-user-{n}", PARTITIONS) in owned
    )


async def test_200_concurrent_submissions_over_two_gateways_accept_exactly_the_in_flight_limit(
    kit: GatewayKit,
) -> None:
    start_gateway, tokens, http, kafka_bootstrap, topic_prefix = kit
    gateways = await two_gateways(
        start_gateway, gateway_max_in_flight=20, gateway_submissions_per_minute=0
    )
    alice = tokens("alice")
    answers = await asyncio.gather(
        *(post(http, gateways[n % 2].url, alice, {"prompt": f"p{n}"}) for n in range(200))
    )
    statuses = Counter(status for status, _ in answers)
    assert statuses == {202: 20, 429: 180}
    assert {b["limit"] for s, b in answers if s == 429} == {"jobs-in-flight"}
    accepted = sorted(b["job_id"] for s, b in answers if s == 202)
    assert sorted(await run_job_ids(kafka_bootstrap, topic_prefix)) == accepted


async def test_200_concurrent_submissions_over_two_gateways_accept_exactly_the_per_minute_limit(
    kit: GatewayKit,
) -> None:
    start_gateway, tokens, http, kafka_bootstrap, topic_prefix = kit
    gateways = await two_gateways(
        start_gateway, gateway_max_in_flight=0, gateway_submissions_per_minute=30
    )
    bob = tokens("bob")
    answers = await asyncio.gather(
        *(post(http, gateways[n % 2].url, bob, {"prompt": f"p{n}"}) for n in range(200))
    )
    assert Counter(status for status, _ in answers) == {202: 30, 429: 170}
    refused = [b for s, b in answers if s == 429]
    assert {b["limit"] for b in refused} == {"submissions-per-minute"}
    assert len(await run_job_ids(kafka_bootstrap, topic_prefix)) == 30


async def test_one_key_sent_to_both_gateways_at_once_is_one_job_and_one_run_record(
    kit: GatewayKit,
) -> None:
    start_gateway, tokens, http, kafka_bootstrap, topic_prefix = kit
    one, two = await two_gateways(start_gateway)
    carol = tokens("carol")
    body = {"prompt": "charge once", "metadata": {"order": 7}}
    answers = await asyncio.gather(
        *(
            post(http, (one, two)[n % 2].url, carol, body, **{"Idempotency-Key": "order-7"})
            for n in range(20)
        )
    )
    assert {status for status, _ in answers} == {202}
    assert len({b["job_id"] for _, b in answers}) == 1
    assert len({b["submitted_at"] for _, b in answers}) == 1, "every replay names the first"
    (job_id,) = {b["job_id"] for _, b in answers}
    assert await run_job_ids(kafka_bootstrap, topic_prefix) == [job_id]
    outcomes = Counter(d["outcome"] for d in await decided_requests(kafka_bootstrap, topic_prefix))
    assert outcomes == {"accepted": 1, "replayed": 19}


async def test_an_owner_stopped_abruptly_mid_stream_moves_its_partitions_and_limits_stay_exact(
    kit: GatewayKit,
) -> None:
    start_gateway, tokens, http, kafka_bootstrap, topic_prefix = kit
    doomed, survivor = await two_gateways(
        start_gateway,
        gateway_max_in_flight=60,
        gateway_submissions_per_minute=0,
        gateway_publish_timeout_s=20,
    )
    user = user_owned_by(doomed, topic_prefix)
    token = tokens(user)

    async def stream(n: int) -> tuple[int, dict[str, Any]]:
        await asyncio.sleep(n * 0.01)  # a steady stream, about 100 per second
        return await post(http, survivor.url, token, {"prompt": f"p{n}"})

    requests = asyncio.gather(*(stream(n) for n in range(150)))
    await wait_for(
        lambda: decided(doomed, "accepted") >= 10,
        timeout=30,
        message="the doomed owner deciding",
    )
    # Abruptly: its loops die wherever they are, a transaction perhaps open.
    await doomed.background.cancel()
    await doomed.stop()
    answers = await requests
    assert survivor.owner is not None and len(survivor.owner.owned) == PARTITIONS
    statuses = Counter(status for status, _ in answers)
    assert statuses[202] == 60, statuses
    assert set(statuses) <= {202, 429, 503}
    await assert_each_acceptance_once(answers, kafka_bootstrap, topic_prefix)


async def test_a_gateway_answers_its_own_requests_without_reading_their_decisions_back(
    kit: GatewayKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    start_gateway, tokens, http, kafka_bootstrap, topic_prefix = kit
    # Every decision read from the topic is dropped: only the owner's in-process answer,
    # given once its transaction committed, can make this a 202.
    monkeypatch.setattr(KafkaAdmissionLink, "_handle", lambda _self, _batch: None)
    gw = await start_gateway(gateway_publish_timeout_s=4)
    status, body = await post(http, gw.url, tokens("erin"), {"prompt": "answered here"})
    assert status == 202
    assert await run_job_ids(kafka_bootstrap, topic_prefix) == [body["job_id"]]


async def test_a_gateway_owning_the_users_partition_decides_without_appending_the_request(
    kit: GatewayKit,
) -> None:
    start_gateway, tokens, http, kafka_bootstrap, topic_prefix = kit
    gw = await start_gateway()
    answers = [await post(http, gw.url, tokens(f"own-{n}"), {"prompt": f"p{n}"}) for n in range(8)]
    assert [status for status, _ in answers] == [202] * 8
    assert await requests_appended(kafka_bootstrap, topic_prefix) == 0
    decisions = await decided_requests(kafka_bootstrap, topic_prefix)
    accepted = sorted(b["job_id"] for _, b in answers)
    assert sorted(d["job_id"] for d in decisions if d["outcome"] == "accepted") == accepted
    assert sorted(await run_job_ids(kafka_bootstrap, topic_prefix)) == accepted


async def test_a_request_whose_decision_never_comes_is_a_503_and_never_a_job(
    kit: GatewayKit,
) -> None:
    start_gateway, tokens, http, kafka_bootstrap, topic_prefix = kit
    gw = await start_gateway(gateway_publish_timeout_s=2)
    assert gw.owner is not None
    gw.owner.paused.set()  # the owner decides nothing: no decision comes
    status, problem = await post(http, gw.url, tokens("dave"), {"prompt": "late"})
    assert status == 503
    assert problem["type"].endswith("/kafka-unavailable")
    gw.owner.paused.clear()  # it decides again, past the request's accept_by
    await wait_for(lambda: decided(gw, "expired") == 1, message="the late request refused")
    assert await run_job_ids(kafka_bootstrap, topic_prefix) == []
    records = await topic_records(kafka_bootstrap, topic_prefix)
    assert not any(r.type == "job.accepted" for rs in records.values() for r, _ in rs)


async def test_an_owner_slowed_past_accept_by_before_its_commit_aborts_and_refuses(
    kit: GatewayKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    start_gateway, tokens, http, kafka_bootstrap, topic_prefix = kit
    # The first transaction is decided, then the owner is slowed past the request's
    # accept_by (1 s: half the publish timeout) before it would commit.
    begin = AIOKafkaProducer.begin_transaction
    slowed: list[bool] = []

    async def slow_begin(producer: AIOKafkaProducer) -> None:
        if not slowed:
            slowed.append(True)
            await asyncio.sleep(1.5)  # the slowness under test, not a wait for an event
        await begin(producer)

    monkeypatch.setattr(AIOKafkaProducer, "begin_transaction", slow_begin)
    gw = await start_gateway(gateway_publish_timeout_s=2)
    status, _ = await post(http, gw.url, tokens("frank"), {"prompt": "slow owner"})
    assert status == 503
    assert slowed
    # Aborted, then decided again: expired, never accepted, no job, nothing to void.
    assert decided(gw, "expired") == 1
    assert decided(gw, "accepted") == 0
    assert await run_job_ids(kafka_bootstrap, topic_prefix) == []


async def test_an_acceptance_committed_after_its_503_has_its_job_cancelled(
    kit: GatewayKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    start_gateway, tokens, http, kafka_bootstrap, topic_prefix = kit
    # The owner decides in time and appends its transaction, then its commit stalls until
    # the requester has answered 503: the job's records commit after that answer.
    released = hold_commits(monkeypatch)
    gw = await start_gateway(gateway_publish_timeout_s=2)
    status, problem = await post(http, gw.url, tokens("erin"), {"prompt": "slow commit"})
    assert status == 503
    assert problem["type"].endswith("/kafka-unavailable")
    released.set()

    def late_voids() -> float:
        value = gw.registry.get_sample_value("streamjobs_gateway_admission_late_voids_total")
        return value or 0.0

    await wait_for(lambda: late_voids() == 1, message="the late acceptance seen by its requester")
    # The job exists now, so it must be cancelled: an admin cancel follows its command.
    [job_id] = await run_job_ids(kafka_bootstrap, topic_prefix)

    async def cancelled() -> bool:
        records = await topic_records(kafka_bootstrap, topic_prefix)
        cancels = [r for r, _ in records[control_topic(topic_prefix)] if r.job_id == job_id]
        return len(cancels) == 1 and cancels[0].data.admin

    await wait_for(cancelled, message="the cancel of the job accepted after its 503")


async def test_job_links_name_the_notifier_serving_the_jobs_chunk_partition(
    kit: GatewayKit,
) -> None:
    start_gateway, tokens, http, *_ = kit
    urls = ["ws://notifier-0.test/ws", "ws://notifier-1.test/ws"]
    gw = await start_gateway(gateway_notifier_ws_urls=",".join(urls), gateway_max_in_flight=0)
    erin = tokens("erin")
    links = {}
    for n in range(30):  # both instances named, but for a chance of 2 in 2**30
        status, body = await post(http, gw.url, erin, {"prompt": f"p{n}"})
        assert status == 202
        links[body["job_id"]] = body["links"]["websocket"]
    chunk_partitions = 4  # the session's topics
    assert links == {j: urls[notifier_for(j, chunk_partitions, 2)] for j in links}
    assert set(links.values()) == set(urls), "both instances named"


async def test_the_sse_proxy_reaches_the_notifier_serving_the_job(kit: GatewayKit) -> None:
    start_gateway, tokens, http, *_ = kit
    runners = []
    urls = []
    for n in range(2):

        async def events(request: web.Request, n: int = n) -> web.Response:
            return web.Response(text=f"data: notifier-{n}\n\n", content_type="text/event-stream")

        app = web.Application()
        app.router.add_get("/api/v1/jobs/{job_id}/events", events)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
    try:
        gw = await start_gateway(gateway_notifier_sse_urls=",".join(urls), gateway_max_in_flight=0)
        frank = tokens("frank")
        seen = set()
        for n in range(24):  # both instances reached, but for a chance of 2 in 2**24
            status, body = await post(http, gw.url, frank, {"prompt": f"p{n}"})
            assert status == 202
            job_id = body["job_id"]
            async with http.get(
                f"{gw.url}/api/v1/jobs/{job_id}/events", headers=bearer(frank)
            ) as resp:
                assert resp.status == 200
                text = await resp.text()
            expected = notifier_for(job_id, 4, 2)
            assert text == f"data: notifier-{expected}\n\n"
            seen.add(expected)
        assert seen == {0, 1}
    finally:
        for runner in runners:
            await runner.cleanup()


async def test_submits_of_many_users_arriving_during_one_commit_land_in_order_decided_once(
    kit: GatewayKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    start_gateway, tokens, http, kafka_bootstrap, topic_prefix = kit
    # Every commit is held until all the requests are appended: what arrives while a
    # partition's transaction commits must wait, and go into its next transaction.
    released = hold_commits(monkeypatch)
    asker, owner = await two_gateways(
        start_gateway,
        gateway_publish_timeout_s=40,
        gateway_max_in_flight=0,
        gateway_submissions_per_minute=0,
        gateway_admission_max_transactions=0,
    )
    assert owner.owner is not None
    owned = set(owner.owner.owned)
    # Users the other gateway decides for: every request travels through the topic.
    names = (f"{topic_prefix}-batch-{n}" for n in range(1000))
    users = [tokens(u) for u in names if chunk_partition(u, PARTITIONS) in owned][:24]
    count = 4 * len(users)  # under the client's 100 connections: every request is sent
    answers = asyncio.gather(
        *(post(http, asker.url, users[n % len(users)], {"prompt": f"p{n}"}) for n in range(count))
    )
    await wait_for(
        lambda: requests_appended(kafka_bootstrap, topic_prefix),
        timeout=30,
        message="the first requests appended",
    )
    appended = await wait_for(
        lambda: _at_least(requests_appended(kafka_bootstrap, topic_prefix), count),
        timeout=30,
        message=f"all {count} requests appended while the first commits are held",
    )
    assert appended == count
    released.set()
    statuses = Counter(status for status, _ in await answers)
    assert statuses == {202: count}

    requests = await committed_values(kafka_bootstrap, admissions_topic(topic_prefix))
    decisions = await decided_requests(kafka_bootstrap, topic_prefix)
    ids = [d["request_id"] for d in decisions]
    assert len(ids) == len(set(ids)) == count, "each request decided once"
    asked: defaultdict[str, list[str]] = defaultdict(list)
    answered: defaultdict[str, list[str]] = defaultdict(list)
    for r in requests:
        asked[r["user_id"]].append(r["request_id"])
    for d in decisions:
        answered[d["user_id"]].append(d["request_id"])
    assert answered == asked, "each user's requests decided in the order they were appended"
    assert sorted(await run_job_ids(kafka_bootstrap, topic_prefix)) == sorted(
        d["job_id"] for d in decisions
    )
    transactions = owner.registry.get_sample_value(
        "streamjobs_gateway_admission_transaction_requests_count"
    )
    # Per partition: the held first transaction, then the rest in one more (one further at
    # most, for requests fetched while it committed).
    assert transactions is not None and transactions <= 3 * len(owned), transactions


async def _at_least(count: Awaitable[int], least: int) -> int:
    value = await count
    return value if value >= least else 0


async def test_an_owner_killed_mid_batch_loses_no_acceptance_and_doubles_none(
    kit: GatewayKit, kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    start_gateway, tokens, http, *_ = kit
    unlimited = {"GATEWAY_MAX_IN_FLIGHT": "0", "GATEWAY_SUBMISSIONS_PER_MINUTE": "0"}
    async with gateway_process(
        kafka_bootstrap, topic_prefix, auth_secret, instance="gateway-9", **unlimited
    ) as doomed:
        survivor = await start_gateway(
            gateway_max_in_flight=0, gateway_submissions_per_minute=0, gateway_publish_timeout_s=30
        )
        owner = survivor.owner
        assert owner is not None
        await wait_for(
            lambda: 0 < len(owner.owned) < PARTITIONS,
            timeout=30,
            message="the admission partitions shared with the gateway process",
        )
        theirs = set(range(PARTITIONS)) - set(owner.owned)
        users = [
            tokens(u)
            for u in (f"{topic_prefix}-killed-{n}" for n in range(400))
            if chunk_partition(u, PARTITIONS) in theirs
        ][:8]
        answers: list[tuple[int, dict[str, Any]]] = []

        async def stream(n: int) -> None:
            await asyncio.sleep(n * 0.01)  # a steady stream, about 100 per second
            answers.append(
                await post(http, survivor.url, users[n % len(users)], {"prompt": f"{n}"})
            )

        requests = asyncio.gather(*(stream(n) for n in range(300)))
        await wait_for(
            lambda: sum(s == 202 for s, _ in answers) >= 20,
            timeout=30,
            message="the gateway process deciding",
        )
        # kill -9: its transaction under way, if any, is left open; the next owner fences it.
        os.kill(doomed.popen.pid, signal.SIGKILL)
        accepted_before = sum(s == 202 for s, _ in answers)
        await requests
    statuses = Counter(status for status, _ in answers)
    assert set(statuses) <= {202, 503}, statuses
    assert statuses[202] > accepted_before, "the survivor decided after the kill"
    assert len(owner.owned) == PARTITIONS
    await assert_each_acceptance_once(answers, kafka_bootstrap, topic_prefix)
