"""A job's owner is fixed by its first job.accepted, and known beyond the replayed window."""

from __future__ import annotations

import json
import time
import uuid

import aiohttp
import pytest

from tests.integration.notifier_support import (
    Received,
    next_of,
    notifier_settings,
    open_ws,
    publisher,
    read_until,
    running_notifier,
    subscribe,
    token,
    words,
    ws_url,
)
from tests.integration.test_notifier_resume import parse_sse

pytestmark = pytest.mark.kafka

HOUR_AGO_MS = int((time.time() - 3600) * 1000)


async def test_a_second_accepted_naming_another_user_never_hands_the_job_over(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    texts = words(8)
    settings = notifier_settings(kafka_bootstrap, topic_prefix, auth_secret)
    async with publisher(kafka_bootstrap, topic_prefix) as pub:
        job_id = str(uuid.uuid4())
        await pub.accepted(job_id, "alice")
        await pub.chunks(job_id, texts[:4])
        await pub.accepted(job_id, "mallory")  # a later fact claiming the job
        await pub.chunks(job_id, texts, start=4)
        await pub.completed(job_id, texts)
        await pub.flush()
        # Live, and again on a fresh instance that rebuilt the job from history.
        for _ in range(2):
            async with running_notifier(settings) as service:
                mallory = await open_ws(ws_url(service), token(auth_secret, "mallory"))
                await subscribe(mallory, job_id)
                refused = await next_of(mallory, "error", "subscribed", "chunk")
                await mallory.close()
                alice = await open_ws(ws_url(service), token(auth_secret, "alice"))
                await subscribe(alice, job_id)
                got = await read_until(alice, Received())
                await alice.close()
            assert refused["code"] == "forbidden"
            assert got.text == "".join(texts)


async def test_owner_subscribing_after_a_restart_to_a_job_older_than_the_window_is_told_to_resync(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    texts = words(6)
    settings = notifier_settings(
        kafka_bootstrap, topic_prefix, auth_secret, notifier_lookback_s=900.0
    )
    async with publisher(kafka_bootstrap, topic_prefix) as pub:
        # An hour ago: one job finished, one accepted and still running now.
        pub.timestamp_ms = HOUR_AGO_MS
        done = await pub.job("alice", texts)
        running = str(uuid.uuid4())
        await pub.accepted(running, "alice")
        await pub.accepted(done, "mallory")  # a later claim, also before the window
        await pub.flush()
        pub.timestamp_ms = None
        async with (
            running_notifier(settings) as service,
            aiohttp.ClientSession() as http,
        ):
            assert done not in service.hub.jobs, (
                "the old job was replayed: not older than the window"
            )
            alice = await open_ws(ws_url(service), token(auth_secret, "alice"))
            await subscribe(alice, done, last_seq=2, attempt=1)
            head = await next_of(alice, "subscribed", "error")
            told = await next_of(alice, "resync", "error")

            # The running one: what history exists (none), then the live chunks it lacks.
            await subscribe(alice, running, last_seq=9, attempt=1)
            head_running = await next_of(alice, "subscribed", "error")
            told_running = await next_of(alice, "resync", "error")
            later = words(16)
            await pub.chunks(running, later)
            await pub.flush()
            live = await read_until(alice, Received(), chunks=6)
            await alice.close()

            mallory = await open_ws(ws_url(service), token(auth_secret, "mallory"))
            await subscribe(mallory, done)
            refused = await next_of(mallory, "error", "subscribed")
            await mallory.close()

            sse = f"http://127.0.0.1:{service.sse_port}/api/v1/jobs/{done}/events"
            async with http.get(sse, params={"token": token(auth_secret, "alice")}) as resp:
                sse_status = resp.status
                sse_events = parse_sse(await resp.text())

    assert head["type"] == "subscribed" and head["status"] == "completed"
    assert told["reason"] == "history unavailable"
    assert (told["channel"], told["status"]) == (f"job:{done}", "completed")
    assert head_running["type"] == "subscribed"
    assert told_running["reason"] == "history unavailable"
    assert live.seqs == list(range(10, 16)), "what it had is not sent again, the rest is"
    assert refused["code"] == "forbidden"
    assert sse_status == 200
    assert [e["event"] for e in sse_events] == ["subscribed", "resync"], "the SSE stream ends"
    assert json.loads(sse_events[1]["data"])["status"] == "completed"
