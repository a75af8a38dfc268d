"""The Python client (`shared.client`) over the whole running system."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from deploy.localstack.procs import free_port
from deploy.localstack.stack import Stack
from shared.auth import issue_token
from shared.client import (
    AsyncClient,
    Backoff,
    Chunk,
    Client,
    Conflict,
    Event,
    NotFound,
    Unauthorized,
    ValidationFailed,
)
from shared.lifecycle import JobStatus
from tests.support import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]

QUICK = Backoff(first=0.1, longest=1.0, give_up_s=90)


def client_for(system: Stack, token: str, backoff: Backoff | None = None) -> AsyncClient:
    urls = system.urls()
    return AsyncClient(urls["gateway"], token, ws_url=urls["notifier_ws"], backoff=backoff)


async def test_follow_survives_a_notifier_kill_9_without_a_gap_and_equals_the_stored_result(
    system: Stack, user_token: str
) -> None:
    async with client_for(system, user_token, backoff=QUICK) as client:
        job = await client.submit(
            "Stream for a while. [[sim tokens=240 tps=40]]", config={"max_tokens": 240}
        )
        follow = client.follow(job)
        chunks: list[Chunk] = []
        final: Event | None = None
        restart: asyncio.Task[None] | None = None
        async with asyncio.timeout(100):
            async for item in follow:
                if isinstance(item, Chunk):
                    chunks.append(item)
                    if len(chunks) == 3 and restart is None:
                        system.processes["notifier"].kill()  # SIGKILL: no goodbye
                        restart = asyncio.create_task(
                            asyncio.to_thread(system.start_service, "notifier")
                        )
                elif item.final:
                    final = item
        assert restart is not None
        await restart
        assert final is not None and final.event == "job.completed"
        assert follow.reconnects >= 1, "the kill never cost the client its connection"
        assert not any(c.replaces for c in chunks)
        assert [c.seq for c in chunks] == list(range(len(chunks))), "gap or duplicate"
        text = "".join(c.text for c in chunks)
        assert text == final.data["response"]
        assert (await client.result(job.job_id, wait_s=30)).response == text


async def test_follow_falls_back_to_server_sent_events_when_the_websocket_is_unreachable(
    system: Stack, user_token: str
) -> None:
    nowhere = f"ws://127.0.0.1:{free_port()}/ws"  # nothing listens there
    urls = system.urls()
    async with AsyncClient(urls["gateway"], user_token, ws_url=nowhere, backoff=QUICK) as client:
        job = await client.submit("Fall back. [[sim tokens=40]]")
        follow = client.follow(job.job_id)
        async with asyncio.timeout(60):
            text, final = await follow.text()
        assert follow.transport == "sse"
        assert final.event == "job.completed"
        assert text == final.data["response"]


async def test_listing_walks_every_job_exactly_once_across_pages(system: Stack) -> None:
    user = f"pager-{uuid.uuid4().hex[:8]}"
    token = issue_token(system.auth_secret(), user)
    async with client_for(system, token) as client:
        submitted = {
            (await client.submit(f"page me {i} [[sim tokens=3]]")).job_id for i in range(7)
        }

        async def all_listed() -> bool:
            page = await client.list_page(limit=50)
            return {j.job_id for j in page.items} >= submitted

        await wait_for(all_listed, timeout=30, message="every job reaches the read side")
        first = await client.list_page(limit=3)
        assert len(first.items) == 3 and first.next_cursor is not None
        walked = [job.job_id async for job in client.list(page_size=3)]
        assert len(walked) == len(set(walked)) == 7
        assert set(walked) == submitted


async def test_errors_arrive_as_typed_exceptions(system: Stack, user_token: str) -> None:
    async with client_for(system, user_token) as client:
        with pytest.raises(NotFound) as missing:
            await client.get("no-such-job")
        assert missing.value.status == 404 and missing.value.kind == "job-not-found"
        with pytest.raises(ValidationFailed) as invalid:
            await client.submit("x", config={"max_tokens": 0})
        assert invalid.value.status == 422 and invalid.value.errors
    async with client_for(system, "not-a-token") as stranger:
        with pytest.raises(Unauthorized) as refused:
            await stranger.list_page()
        assert refused.value.status == 401


async def test_retry_runs_a_failed_job_again_and_a_completed_job_is_a_conflict(
    system: Stack, user_token: str
) -> None:
    urls = system.urls()
    async with client_for(system, user_token) as client:
        job = await client.submit("Fail for good. [[sim fail=400]]", metadata={"case": 7})
        assert (await client.result(job.job_id, wait_s=30)).status is JobStatus.FAILED
        again = await client.retry(job.job_id, idempotency_key="client-retry-1")
        assert again.job_id != job.job_id and again.status is JobStatus.QUEUED
        same = await client.retry(job.job_id, idempotency_key="client-retry-1")
        assert same.job_id == again.job_id
        _, final = await client.text(again)
        assert final.status is JobStatus.FAILED  # the same prompt fails the same way
        await client.result(again.job_id, wait_s=30)
        retried = await client.get(again.job_id)
        assert retried.retry_of == job.job_id
        assert retried.prompt == "Fail for good. [[sim fail=400]]"
        assert retried.metadata == {"case": 7}
        assert (await client.get(job.job_id)).retried_by == [again.job_id]

        done = await client.submit("Fine. [[sim tokens=5]]")
        await client.result(done.job_id, wait_s=30)
        with pytest.raises(Conflict) as conflict:
            await client.retry(done.job_id)
        assert conflict.value.status == 409 and conflict.value.kind == "job-not-retryable"
        with pytest.raises(NotFound):
            await client.retry("no-such-job")

    def blocking() -> str:
        with Client(urls["gateway"], user_token) as client:
            return client.retry(job.job_id).job_id

    third = await asyncio.wait_for(asyncio.to_thread(blocking), timeout=30)
    assert third not in (job.job_id, again.job_id)


async def test_the_blocking_client_submits_follows_and_reads_the_result(
    system: Stack, user_token: str
) -> None:
    urls = system.urls()

    def run() -> tuple[str, str | None]:
        with Client(urls["gateway"], user_token, ws_url=urls["notifier_ws"]) as client:
            job = client.submit("Blocking. [[sim tokens=30]]", priority="high")
            text, _ = client.text(job)
            assert client.get(job.job_id).priority == "high"
            return text, client.result(job.job_id, wait_s=30).response

    text, stored = await asyncio.wait_for(asyncio.to_thread(run), timeout=60)
    assert text and text == stored


async def test_a_retried_attempt_replaces_the_text_of_the_one_cut_short(
    system: Stack, user_token: str
) -> None:
    async with client_for(system, user_token, backoff=QUICK) as client:
        job = await client.submit("Cut once. [[sim tokens=30 tps=200 cut_after=5 fail_times=1]]")
        items = []
        async with asyncio.timeout(90):
            async for item in client.follow(job):
                items.append(item)
        chunks = [i for i in items if isinstance(i, Chunk)]
        events = [i.event for i in items if isinstance(i, Event)]
        assert "job.retrying" in events and events[-1] == "job.completed"
        restart = next(i for i, c in enumerate(chunks) if c.replaces)
        assert restart > 0 and chunks[restart].attempt == 2 and chunks[restart].seq == 0
        assert {c.attempt for c in chunks[:restart]} == {1}
        second = chunks[restart:]
        assert [c.seq for c in second] == list(range(len(second)))
        final = items[-1]
        assert isinstance(final, Event)
        assert "".join(c.text for c in second) == final.data["response"]
