"""Resuming after a drop: of the client, of the notifier itself, and over SSE."""

from __future__ import annotations

import asyncio
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

pytestmark = pytest.mark.kafka


async def test_client_dropped_mid_stream_resumes_with_its_last_seq_without_gap_or_duplicate(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    texts = words(60)
    settings = notifier_settings(kafka_bootstrap, topic_prefix, auth_secret)
    tok = token(auth_secret, "alice")
    async with (
        running_notifier(settings) as service,
        publisher(kafka_bootstrap, topic_prefix) as pub,
    ):
        job_id = str(uuid.uuid4())
        await pub.accepted(job_id, "alice")
        await pub.flush()
        ws = await open_ws(ws_url(service), tok)
        await subscribe(ws, job_id)
        await pub.chunks(job_id, texts[:30])
        await pub.flush()
        got = await read_until(ws, Received(), chunks=12)
        await ws.close()  # dropped mid-stream, with chunks 12..29 published meanwhile

        await pub.chunks(job_id, texts, start=30)
        await pub.flush()
        ws = await open_ws(ws_url(service), tok)
        await subscribe(ws, job_id, last_seq=got.last_seq, attempt=1)
        await pub.completed(job_id, texts)
        await pub.flush()
        await read_until(ws, got)
        await ws.close()
    assert got.seqs == list(range(len(texts))), "a gap or a duplicate across the drop"
    assert got.text == "".join(texts)
    assert got.final is not None and got.final["data"]["response"] == got.text


async def test_client_of_a_stopped_notifier_resumes_on_a_new_instance_that_rebuilt_the_job(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    texts = words(50)
    settings = notifier_settings(kafka_bootstrap, topic_prefix, auth_secret)
    tok = token(auth_secret, "alice")
    async with publisher(kafka_bootstrap, topic_prefix) as pub:
        job_id = str(uuid.uuid4())
        await pub.accepted(job_id, "alice")
        await pub.flush()
        async with running_notifier(settings) as first:
            ws = await open_ws(ws_url(first), tok)
            await subscribe(ws, job_id)
            await pub.chunks(job_id, texts[:20])
            await pub.flush()
            got = await read_until(ws, Received(), chunks=20)
        # The old instance is gone (its clients got 1001); the stream goes on meanwhile.
        await pub.chunks(job_id, texts, start=20)
        await pub.flush()
        async with running_notifier(settings) as second:
            assert job_id in second.hub.jobs, "the job was not rebuilt from the lookback window"
            ws = await open_ws(ws_url(second), tok)
            await subscribe(ws, job_id, last_seq=got.last_seq, attempt=1)
            await pub.completed(job_id, texts)
            await pub.flush()
            await read_until(ws, got)
            await ws.close()
    assert got.seqs == list(range(len(texts)))
    assert got.text == "".join(texts)


async def test_first_notifier_closes_its_clients_with_going_away_on_stop(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    settings = notifier_settings(kafka_bootstrap, topic_prefix, auth_secret)
    async with running_notifier(settings) as service:
        ws = await open_ws(ws_url(service), token(auth_secret, "alice"))
    await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == 1001


def parse_sse(body: str) -> list[dict[str, str]]:
    events = []
    for block in body.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            key, _, value = line.partition(": ")
            fields[key] = value
        if fields:
            events.append(fields)
    return events


async def test_sse_resumes_after_last_event_id_and_ends_with_the_final_event(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    import json

    texts = words(30)
    settings = notifier_settings(kafka_bootstrap, topic_prefix, auth_secret)
    tok = token(auth_secret, "alice")
    async with (
        running_notifier(settings) as service,
        publisher(kafka_bootstrap, topic_prefix) as pub,
        aiohttp.ClientSession() as http,
    ):
        job_id = await pub.job("alice", texts)
        url = f"http://127.0.0.1:{service.sse_port}/api/v1/jobs/{job_id}/events"
        async with (
            asyncio.timeout(20),
            http.get(
                url, headers={"Authorization": f"Bearer {tok}", "Last-Event-ID": "1:9"}
            ) as resp,
        ):
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            events = parse_sse(await resp.text())
        async with asyncio.timeout(20), http.get(url, params={"token": tok}) as resp:
            everything = parse_sse(await resp.text())
        async with http.get(url, params={"token": token(auth_secret, "mallory")}) as resp:
            refused = resp.status

    chunks = [e for e in events if e.get("event") == "chunk"]
    assert [c["id"] for c in chunks] == [f"1:{s}" for s in range(10, 30)]
    assert "".join(json.loads(c["data"])["text"] for c in chunks) == "".join(texts[10:])
    assert events[-1]["event"] == "job.completed"
    full = [json.loads(e["data"])["text"] for e in everything if e.get("event") == "chunk"]
    assert "".join(full) == "".join(texts)
    assert refused == 404
