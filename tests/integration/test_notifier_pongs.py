"""A client that pings and never reads costs the server a bounded amount, however long it goes on.

What is measured is what the server holds for its clients (outboxes, batches
being sent, socket write buffers): `WebSocketEndpoint.buffered_bytes`, sampled
all along while the client writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from websockets.exceptions import ConnectionClosed

from services.notifier.app import NotifierService
from tests.integration.notifier_support import (
    Received,
    StalledClient,
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

BOUND = 1024 * 1024  # write limit + one socket read of pongs + the outbox, with room to spare
FLOOD = 64 * 1024 * 1024  # what the client tries to make the server answer


@asynccontextmanager
async def sampled(service: NotifierService) -> AsyncIterator[list[int]]:
    peak = [0]

    async def sample() -> None:
        while True:
            peak[0] = max(peak[0], service.ws.buffered_bytes())
            await asyncio.sleep(0.002)

    task = asyncio.create_task(sample())
    try:
        yield peak
    finally:
        task.cancel()
        peak[0] = max(peak[0], service.ws.buffered_bytes())


async def test_protocol_pings_from_a_client_that_never_reads_stop_being_read_at_the_bound(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    settings = notifier_settings(kafka_bootstrap, topic_prefix, auth_secret)
    async with running_notifier(settings) as service, sampled(service) as peak:
        stalled = await StalledClient.connect(service.port, token(auth_secret, "mallory"))
        # 125 bytes is the most a ping may carry; each one asks for a pong of the same size.
        while stalled.sent < FLOOD and await stalled.send(pings=500, ping_data=b"p" * 125):
            pass
        stopped_reading = stalled.sent < FLOOD
        # A well-behaved client on the same notifier is served meanwhile.
        async with publisher(kafka_bootstrap, topic_prefix) as pub:
            job_id = await pub.job("alice", words(20))
            alice = await open_ws(ws_url(service), token(auth_secret, "alice"))
            await subscribe(alice, job_id)
            got = await read_until(alice, Received())
            await alice.close()
        await stalled.close()

    assert stopped_reading, f"the server kept reading {stalled.sent} bytes of pings"
    assert peak[0] <= BOUND, f"the server held {peak[0]} bytes for a client that does not read"
    assert got.text == "".join(words(20))


async def test_app_pings_from_a_client_that_never_reads_its_pongs_end_in_4008_within_the_bound(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    settings = notifier_settings(
        kafka_bootstrap,
        topic_prefix,
        auth_secret,
        notifier_queue_frames=64,
        notifier_slow_consumer_s=1.0,
    )
    async with running_notifier(settings) as service, sampled(service) as peak:
        stalled = await StalledClient.connect(service.port, token(auth_secret, "mallory"))
        (server_side,) = service.ws.clients.values()
        # 60 KB messages, and many small pings whose pongs outgrow every socket buffer.
        padded = json.dumps({"type": "ping", "id": "x" * 64, "pad": "y" * 60_000})
        small = json.dumps({"type": "ping", "id": "x" * 64})
        while stalled.sent < FLOOD and await stalled.send(texts=[padded] + [small] * 400):
            pass
        stopped_reading = stalled.sent < FLOOD
        # Its pongs go nowhere: it is closed as a slow consumer and forgotten.
        await asyncio.wait_for(server_side.wait_closed(), 15)
        closes = service.registry.get_sample_value("streamjobs_notifier_slow_consumer_closes_total")
        await stalled.close()

    assert stopped_reading, f"the server kept answering {stalled.sent} bytes of pings"
    assert peak[0] <= BOUND, f"the server held {peak[0]} bytes for a client that does not read"
    assert closes == 1, "the client that never read its pongs was not closed as a slow consumer"


async def test_pings_whose_id_is_too_long_to_echo_are_bad_messages_then_close_4400(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    settings = notifier_settings(kafka_bootstrap, topic_prefix, auth_secret)
    async with running_notifier(settings) as service, sampled(service) as peak:
        ws = await open_ws(ws_url(service), token(auth_secret, "mallory"))
        for _ in range(25):
            await ws.send(json.dumps({"type": "ping", "id": "x" * 60_000}))
        codes = []
        async with asyncio.timeout(10):
            with contextlib.suppress(ConnectionClosed):
                async for raw in ws:
                    codes.append(json.loads(raw).get("code"))
        close_code = ws.close_code

    assert peak[0] <= BOUND
    assert set(codes) == {"bad_message"}
    assert close_code == 4400


async def test_stalled_pinging_client_does_not_hold_back_chunks_of_a_job_it_follows(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    texts = [f"{i:04d}" + "z" * 2000 for i in range(300)]
    settings = notifier_settings(
        kafka_bootstrap, topic_prefix, auth_secret, notifier_queue_frames=32
    )
    async with (
        running_notifier(settings) as service,
        publisher(kafka_bootstrap, topic_prefix) as pub,
        sampled(service) as peak,
    ):
        job_id = str(uuid.uuid4())
        await pub.accepted(job_id, "alice")
        await pub.flush()
        tok = token(auth_secret, "alice")
        stalled = await StalledClient.connect(service.port, tok)
        sub = json.dumps({"type": "subscribe", "channel": f"job:{job_id}"})
        await stalled.send(texts=[sub])
        live = await open_ws(ws_url(service), tok)
        await subscribe(live, job_id)
        reader = asyncio.create_task(read_until(live, Received(), timeout=60))
        await pub.chunks(job_id, texts)
        await pub.completed(job_id, texts, response="(long)")
        await pub.flush()
        while stalled.sent < FLOOD and await stalled.send(pings=200, ping_data=b"q" * 125):
            pass
        got = await reader
        await live.close()
        await stalled.close()

    assert got.seqs == list(range(len(texts)))
    assert peak[0] <= BOUND + 2 * 32 * 2100, f"held {peak[0]} bytes"
