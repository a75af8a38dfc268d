"""A client that stops reading costs a bounded outbox and a resync, never another client's time."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import aiohttp
import pytest

from tests.integration.notifier_support import (
    Received,
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

LIMIT = 32


async def test_stalled_client_gets_a_resync_and_does_not_delay_a_live_one_on_the_same_job(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    # 1,500 chunks of 4 KB: far more than the kernel's socket buffers hold for a stalled reader.
    texts = [f"{i:05d}" + "x" * 4096 for i in range(1500)]
    settings = notifier_settings(
        kafka_bootstrap, topic_prefix, auth_secret, notifier_queue_frames=LIMIT
    )
    tok = token(auth_secret, "alice")
    async with (
        running_notifier(settings) as service,
        publisher(kafka_bootstrap, topic_prefix) as pub,
    ):
        job_id = str(uuid.uuid4())
        await pub.accepted(job_id, "alice")
        await pub.flush()
        # max_queue=1: the stalled client's library stops reading the socket almost at once.
        stalled = await open_ws(ws_url(service), tok, max_queue=1)
        live = await open_ws(ws_url(service), tok)
        await subscribe(stalled, job_id)
        await subscribe(live, job_id)
        reader = asyncio.create_task(read_until(live, Received(), timeout=60))

        most_queued = 0

        async def watch() -> None:
            nonlocal most_queued
            while True:
                most_queued = max([most_queued, *(len(c) for c in service.ws.clients)])
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        await pub.chunks(job_id, texts)
        # The full text would exceed Kafka's record size; this test is about the chunks.
        await pub.completed(job_id, texts, response="(too long for one record)")
        await pub.flush()
        published = time.monotonic()
        got = await reader
        lag = time.monotonic() - published
        watcher.cancel()
        resyncs = service.registry.get_sample_value("streamjobs_notifier_resyncs_total")

        # Now the stalled client reads what it was left with: a resync telling where to resume.
        told: dict[str, object] | None = None
        before = Received()
        async with asyncio.timeout(20):
            while told is None:
                msg = json.loads(await stalled.recv())
                if msg["type"] == "resync":
                    told = msg
                elif msg["type"] == "chunk":
                    before.chunks.append(msg)
        # ...and resumes from its own last seq: it ends with the exact text.
        await subscribe(stalled, job_id, last_seq=before.last_seq, attempt=1)
        resumed = await read_until(stalled, before, timeout=30)
        await stalled.close()
        await live.close()

    assert got.text == "".join(texts)
    assert got.seqs == list(range(len(texts)))
    assert lag < 10, f"the live client finished {lag:.1f}s after the last record"
    assert resyncs is not None and resyncs >= 1
    assert most_queued <= LIMIT + 2, f"an outbox grew to {most_queued} frames"
    assert told is not None
    assert resumed.text == "".join(texts)
    assert resumed.seqs == list(range(len(texts)))
    assert told["channel"] == f"job:{job_id}"
    assert told["attempt"] == 1
    assert isinstance(told["last_seq"], int)


async def test_an_sse_client_that_reads_gets_a_fetch_holding_more_chunks_than_its_outbox(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    # One producer batch of 300 chunks reaches the notifier as one fetch: ten outboxes' worth
    # of one job for a client whose outbox empties only when its own task runs.
    texts = words(300)
    settings = notifier_settings(
        kafka_bootstrap, topic_prefix, auth_secret, notifier_queue_frames=LIMIT
    )
    tok = token(auth_secret, "alice")
    async with (
        running_notifier(settings) as service,
        publisher(kafka_bootstrap, topic_prefix) as pub,
        aiohttp.ClientSession() as http,
    ):
        job_id = str(uuid.uuid4())
        await pub.accepted(job_id, "alice")
        await pub.flush()
        url = f"http://127.0.0.1:{service.sse_port}/api/v1/jobs/{job_id}/events"
        async with asyncio.timeout(30), http.get(url, params={"token": tok}) as resp:
            assert resp.status == 200  # headers come once the subscription is live
            await pub.chunks(job_id, texts)
            await pub.completed(job_id, texts)
            await pub.flush()
            events = parse_sse(await resp.text())
        resyncs = service.registry.get_sample_value("streamjobs_notifier_resyncs_total")

    assert [e["event"] for e in events if e.get("event") != "chunk"] == [
        "subscribed",
        "job.completed",
    ]
    chunks = [e for e in events if e.get("event") == "chunk"]
    assert [c["id"] for c in chunks] == [f"1:{seq}" for seq in range(len(texts))]
    assert "".join(json.loads(c["data"])["text"] for c in chunks) == "".join(texts)
    assert not resyncs
