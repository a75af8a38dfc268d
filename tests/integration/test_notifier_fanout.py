"""Fan-out over real Kafka and real WebSocket clients: many clients, several instances."""

from __future__ import annotations

import asyncio
import uuid

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


async def test_two_hundred_clients_on_one_job_all_receive_the_identical_full_text(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    texts = words(120)
    settings = notifier_settings(kafka_bootstrap, topic_prefix, auth_secret)
    async with (
        running_notifier(settings) as service,
        publisher(kafka_bootstrap, topic_prefix) as pub,
    ):
        job_id = str(uuid.uuid4())
        await pub.accepted(job_id, "alice")
        await pub.flush()
        tok = token(auth_secret, "alice")
        clients = await asyncio.gather(*(open_ws(ws_url(service), tok) for _ in range(200)))
        try:
            await asyncio.gather(*(subscribe(ws, job_id) for ws in clients))
            readers = [
                asyncio.create_task(read_until(ws, Received(), timeout=60)) for ws in clients
            ]
            await pub.chunks(job_id, texts)
            await pub.completed(job_id, texts)
            await pub.flush()
            results = await asyncio.gather(*readers)
        finally:
            await asyncio.gather(*(ws.close() for ws in clients))
    expected = "".join(texts)
    for got in results:
        assert got.seqs == list(range(len(texts))), "a gap or a duplicate"
        assert got.text == expected
        assert got.final is not None and got.final["event"] == "job.completed"
        assert got.final["data"]["response"] == expected


async def test_two_notifiers_side_by_side_both_deliver_every_chunk_to_their_clients(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    texts = words(40)
    settings = notifier_settings(kafka_bootstrap, topic_prefix, auth_secret)
    tok = token(auth_secret, "alice")
    async with (
        running_notifier(settings) as first,
        running_notifier(settings) as second,
        publisher(kafka_bootstrap, topic_prefix) as pub,
    ):
        job_id = str(uuid.uuid4())
        await pub.accepted(job_id, "alice")
        await pub.flush()
        a, b = await open_ws(ws_url(first), tok), await open_ws(ws_url(second), tok)
        await subscribe(a, job_id)
        await subscribe(b, job_id)
        readers = [asyncio.create_task(read_until(ws, Received())) for ws in (a, b)]
        await pub.chunks(job_id, texts)
        await pub.completed(job_id, texts)
        await pub.flush()
        got_a, got_b = await asyncio.gather(*readers)
        await a.close()
        await b.close()
    assert got_a.text == got_b.text == "".join(texts)
    assert got_a.seqs == got_b.seqs == list(range(len(texts)))
