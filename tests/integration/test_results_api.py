"""The read API over the real Kafka and PostgreSQL: isolation, admin, paging, filters, 409."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import aiohttp
import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from services.results import retention
from services.results.app import ResultsService
from shared.contracts import JobAccepted, JobSpec
from shared.topics import Priority
from tests.integration.results_kit import (
    T0,
    Reader,
    caught_up,
    job_script,
    publish_script,
    running,
    settings_for,
)
from tests.support import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


@pytest.fixture
async def service(
    kafka_bootstrap: str, topic_prefix: str, database_url: str, auth_secret: str
) -> AsyncIterator[ResultsService]:
    settings = settings_for(kafka_bootstrap, topic_prefix, database_url, auth_secret)
    async with running(settings) as svc:
        yield svc


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def reader(
    http: aiohttp.ClientSession, service: ResultsService, secret: str, user: str, *scopes: str
) -> Reader:
    return Reader(http, f"http://127.0.0.1:{service.port}", secret, user, *scopes)


async def load(
    producer: AIOKafkaProducer, prefix: str, service: ResultsService, *scripts: object
) -> None:
    for script in scripts:
        await publish_script(producer, prefix, script)  # type: ignore[arg-type]
    await wait_for(lambda: caught_up(service), message="records not written")


async def test_users_see_only_their_own_jobs_and_admin_sees_all(
    service: ResultsService,
    producer: AIOKafkaProducer,
    topic_prefix: str,
    http: aiohttp.ClientSession,
    auth_secret: str,
) -> None:
    alices = job_script("job-alice", user="alice")
    bobs = job_script("job-bob", user="bob", submitted_at=T0 + timedelta(seconds=1))
    await load(producer, topic_prefix, service, alices, bobs)
    alice = reader(http, service, auth_secret, "alice")
    admin = reader(http, service, auth_secret, "root", "jobs:read", "admin")

    status, body = await alice.get("/jobs/job-alice")
    assert status == 200
    assert body["user_id"] == "alice"
    assert body["status"] == "completed"
    assert body["progress"] == {"tokens": 2, "max_tokens": 100, "ratio": 0.02}
    for path in ("/jobs/job-bob", "/jobs/job-bob/stream", "/jobs/job-bob/result"):
        status, body = await alice.get(path)
        assert status == 404, path
        assert body["type"].endswith("/job-not-found")
    status, body = await alice.get("/jobs")
    assert [j["job_id"] for j in body["items"]] == ["job-alice"]
    status, body = await alice.get("/jobs", user_id="bob")
    assert status == 403

    status, body = await admin.get("/jobs")
    assert [j["job_id"] for j in body["items"]] == ["job-bob", "job-alice"]
    status, body = await admin.get("/jobs", user_id="bob")
    assert [j["job_id"] for j in body["items"]] == ["job-bob"]
    status, body = await admin.get("/jobs/job-bob/result")
    assert status == 200
    assert body["response"] == "Hello world"
    assert body["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 2,
        "total_tokens": 12,
        "cached_tokens": None,
        "reasoning_tokens": None,
    }
    # gpt-4o-mini: 10 x 0.15 + 2 x 0.60 USD per 1M tokens
    assert body["estimated_cost_usd"] == pytest.approx(0.0000027)
    assert body["queue_wait_ms"] == 50.0


async def test_missing_or_forged_token_is_401(
    service: ResultsService, http: aiohttp.ClientSession
) -> None:
    base = f"http://127.0.0.1:{service.port}/api/v1"
    async with http.get(f"{base}/jobs") as resp:
        assert resp.status == 401
        assert (await resp.json(content_type=None))["type"].endswith("/unauthorized")
    forged = Reader(http, f"http://127.0.0.1:{service.port}", "forger" * 6, "alice")
    status, _body = await forged.get("/jobs/x")
    assert status == 401


async def test_cursor_pages_are_stable_while_new_jobs_arrive(
    service: ResultsService,
    producer: AIOKafkaProducer,
    topic_prefix: str,
    http: aiohttp.ClientSession,
    auth_secret: str,
) -> None:
    # Five jobs share one submission time: the job id breaks the tie.
    scripts = [
        job_script(f"job-{i}", submitted_at=T0 + timedelta(seconds=i // 5)) for i in range(12)
    ]
    await load(producer, topic_prefix, service, *scripts)
    alice = reader(http, service, auth_secret, "alice")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 5, **({"cursor": cursor} if cursor else {})}
        status, body = await alice.get("/jobs", **params)
        assert status == 200
        seen += [j["job_id"] for j in body["items"]]
        pages += 1
        if pages == 1:
            # A newer job arriving between pages must not shift the next page.
            await load(
                producer,
                topic_prefix,
                service,
                job_script("job-new", submitted_at=T0 + timedelta(hours=1)),
            )
        cursor = body["next_cursor"]
        if cursor is None:
            break
    expected = sorted((s.accepted.data.submitted_at, s.accepted.job_id) for s in scripts)
    assert seen == [job_id for _, job_id in reversed(expected)]
    assert pages == 3
    status, body = await alice.get("/jobs", cursor="garbage!")
    assert status == 400
    assert body["type"].endswith("/invalid-cursor")


async def test_result_is_409_until_the_job_is_final(
    service: ResultsService,
    producer: AIOKafkaProducer,
    topic_prefix: str,
    http: aiohttp.ClientSession,
    auth_secret: str,
) -> None:
    await load(
        producer,
        topic_prefix,
        service,
        job_script("queued-1", outcome="queued"),
        job_script("queued-2", outcome="queued", submitted_at=T0 + timedelta(seconds=1)),
        job_script("running", outcome="running", texts=("par", "tial")),
    )
    alice = reader(http, service, auth_secret, "alice")
    status, body = await alice.get("/jobs/running/result")
    assert status == 409
    assert body["type"].endswith("/not-finished")
    status, body = await alice.get("/jobs/running/stream")
    assert body == {
        "job_id": "running",
        "status": "running",
        "attempt": 1,
        "last_seq": 1,
        "text": "partial",
        "tokens": 2,
    }
    status, first = await alice.get("/jobs/queued-1")
    status, second = await alice.get("/jobs/queued-2")
    assert (first["queue_position"], second["queue_position"]) == (0, 1)
    assert second["waited_ms"] > 0
    status, body = await alice.get("/jobs/queued-2/stream")
    assert (body["last_seq"], body["text"]) == (-1, "")


async def test_retried_job_streams_only_its_current_attempt(
    service: ResultsService,
    producer: AIOKafkaProducer,
    topic_prefix: str,
    http: aiohttp.ClientSession,
    auth_secret: str,
) -> None:
    first = job_script("retried", outcome="running", texts=("old",))
    second = job_script("retried", retries=1, texts=("new", "er"))
    second.events = second.events[1:]  # accepted once
    await load(producer, topic_prefix, service, first, second)
    alice = reader(http, service, auth_secret, "alice")
    _status, body = await alice.get("/jobs/retried/stream")
    assert (body["attempt"], body["text"], body["last_seq"]) == (2, "newer", 1)
    _status, body = await alice.get("/jobs/retried")
    assert (body["attempt"], body["status"]) == (2, "completed")


async def test_a_completed_job_whose_last_chunks_are_not_stored_yet_streams_its_result(
    service: ResultsService,
    producer: AIOKafkaProducer,
    topic_prefix: str,
    http: aiohttp.ClientSession,
    auth_secret: str,
) -> None:
    # The final event and the chunks travel on different topics: the result can be stored
    # before the chunks that make it, and a reader must not see less text than the result.
    script = job_script("ahead", texts=("Hello", " there", " world"))
    script.chunks = script.chunks[:1]
    await load(producer, topic_prefix, service, script)
    alice = reader(http, service, auth_secret, "alice")
    _status, result = await alice.get("/jobs/ahead/result")
    _status, body = await alice.get("/jobs/ahead/stream")
    assert (body["status"], body["attempt"], body["last_seq"]) == ("completed", 1, 2)
    assert body["text"] == result["response"] == "Hello there world"
    assert body["tokens"] == result["usage"]["completion_tokens"]


async def test_list_filters_and_bad_parameters(
    service: ResultsService,
    producer: AIOKafkaProducer,
    topic_prefix: str,
    http: aiohttp.ClientSession,
    auth_secret: str,
) -> None:
    await load(
        producer,
        topic_prefix,
        service,
        job_script("a", job_type="gas_analysis", priority=Priority.HIGH),
        job_script("b", outcome="failed", submitted_at=T0 + timedelta(minutes=1)),
        job_script("c", outcome="queued", submitted_at=T0 + timedelta(minutes=2)),
    )
    alice = reader(http, service, auth_secret, "alice")

    async def ids(**params: object) -> list[str]:
        status, body = await alice.get("/jobs", **params)
        assert status == 200, body
        return [j["job_id"] for j in body["items"]]

    assert await ids(status="failed") == ["b"]
    assert await ids(job_type="gas_analysis") == ["a"]
    assert await ids(priority="high") == ["a"]
    assert await ids(since=(T0 + timedelta(minutes=1)).isoformat()) == ["c", "b"]
    assert await ids(until=(T0 + timedelta(minutes=1)).isoformat()) == ["a"]
    assert await ids(limit=1) == ["c"]
    status, body = await alice.get("/jobs/b")
    assert body["error"] == "server_error: 500"
    for params in ({"limit": 0}, {"limit": "x"}, {"status": "done"}, {"since": "yesterday"}):
        status, body = await alice.get("/jobs", **params)
        assert status == 400, params
        assert body["type"].endswith("/invalid-parameter")
    status, body = await alice.get("/analytics", group_by="colour")
    assert status == 400


async def test_a_jobs_inputs_and_retries_are_read_by_its_owner_until_retention_forgets(
    service: ResultsService,
    producer: AIOKafkaProducer,
    topic_prefix: str,
    http: aiohttp.ClientSession,
    auth_secret: str,
    database_url: str,
) -> None:
    original = job_script("job-orig", outcome="failed", metadata={"ticket": "T-9"})
    retried = job_script("job-again", submitted_at=T0 + timedelta(seconds=5))
    accepted = retried.events[0]
    assert isinstance(accepted, JobAccepted)
    retried.events[0] = accepted.model_copy(
        update={"data": accepted.data.model_copy(update={"retry_of": "job-orig"})}
    )
    await load(producer, topic_prefix, service, original, retried)
    alice = reader(http, service, auth_secret, "alice")

    status, body = await alice.get("/jobs/job-orig/inputs")
    assert status == 200, body
    assert body["user_id"] == "alice" and body["status"] == "failed"
    spec = JobSpec.model_validate(body["spec"])
    assert spec.model_dump() == original.accepted.data.model_dump()
    status, body = await alice.get("/jobs/job-orig")
    assert body["retried_by"] == ["job-again"] and body["retry_of"] is None
    status, body = await alice.get("/jobs/job-again")
    assert body["retry_of"] == "job-orig" and body["retried_by"] == []
    status, page = await alice.get("/jobs")
    assert {item["job_id"]: item["retry_of"] for item in page["items"]} == {
        "job-orig": None,
        "job-again": "job-orig",
    }
    status, _ = await reader(http, service, auth_secret, "bob").get("/jobs/job-orig/inputs")
    assert status == 404

    conn = await asyncpg.connect(database_url)
    try:
        assert await retention.sweep(conn, 0) >= 1
    finally:
        await conn.close()
    status, body = await alice.get("/jobs/job-orig/inputs")
    assert status == 200 and body["status"] == "failed" and body["spec"] is None
