"""Who may see what, and what a confused or hostile client gets back."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

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

pytestmark = pytest.mark.kafka


async def test_second_user_is_refused_another_users_job_like_an_unknown_job_and_user_channel(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    settings = notifier_settings(kafka_bootstrap, topic_prefix, auth_secret)
    async with (
        running_notifier(settings) as service,
        publisher(kafka_bootstrap, topic_prefix) as pub,
    ):
        job_id = await pub.job("alice", words(5))
        mallory = await open_ws(ws_url(service), token(auth_secret, "mallory"))

        await subscribe(mallory, job_id)
        other = await next_of(mallory, "error", "chunk", "subscribed")
        await subscribe(mallory, str(uuid.uuid4()))
        unknown = await next_of(mallory, "error", "chunk", "subscribed")
        await mallory.send(json.dumps({"type": "subscribe", "channel": "user:alice"}))
        user = await next_of(mallory, "error", "subscribed")
        # Still connected and served: its own channel works.
        await mallory.send(json.dumps({"type": "subscribe", "channel": "user:mallory"}))
        own = await next_of(mallory, "error", "subscribed")
        await mallory.close()

        admin = await open_ws(ws_url(service), token(auth_secret, "ops", "admin"))
        await subscribe(admin, job_id)
        seen = await read_until(admin, Received())
        await admin.close()

    assert other["code"] == unknown["code"] == "forbidden"
    assert other["message"] == unknown["message"], "the refusal tells whether the job exists"
    assert user["code"] == "forbidden"
    assert own == {"type": "subscribed", "channel": "user:mallory"}
    assert seen.text == "".join(words(5)), "an admin may see any job"


async def test_subscription_made_before_the_job_is_known_waits_for_job_accepted(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    texts = words(10)
    settings = notifier_settings(
        kafka_bootstrap, topic_prefix, auth_secret, notifier_pending_subscribe_s=5.0
    )
    async with (
        running_notifier(settings) as service,
        publisher(kafka_bootstrap, topic_prefix) as pub,
    ):
        ws = await open_ws(ws_url(service), token(auth_secret, "alice"))
        job_id = str(uuid.uuid4())
        await subscribe(ws, job_id)  # right after the 202: the notifier has not read it yet
        await pub.accepted(job_id, "alice")
        await pub.chunks(job_id, texts)
        await pub.completed(job_id, texts)
        await pub.flush()
        got = await read_until(ws, Received())
        await ws.close()
    assert got.text == "".join(texts)
    assert got.other[0]["type"] == "subscribed"


async def test_user_channel_carries_lifecycle_events_of_the_users_jobs_only(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    settings = notifier_settings(kafka_bootstrap, topic_prefix, auth_secret)
    async with (
        running_notifier(settings) as service,
        publisher(kafka_bootstrap, topic_prefix) as pub,
    ):
        ws = await open_ws(ws_url(service), token(auth_secret, "alice"))
        await ws.send(json.dumps({"type": "subscribe", "channel": "user:alice"}))
        await next_of(ws, "subscribed")
        await pub.job("bob", words(3))
        mine = await pub.job("alice", words(3))
        accepted = await next_of(ws, "event")
        completed = await next_of(ws, "event")
        await ws.close()
    assert (accepted["event"], accepted["job_id"]) == ("job.accepted", mine)
    assert (completed["event"], completed["job_id"]) == ("job.completed", mine)


async def test_malformed_frames_get_a_clear_error_and_the_notifier_keeps_serving(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    settings = notifier_settings(
        kafka_bootstrap, topic_prefix, auth_secret, notifier_auth_timeout_s=0.5
    )
    async with (
        running_notifier(settings) as service,
        publisher(kafka_bootstrap, topic_prefix) as pub,
    ):
        url = ws_url(service)
        # Subscribing before auth: an error, then close 4001.
        async with connect(url) as ws:
            await ws.send(json.dumps({"type": "subscribe", "channel": "job:x"}))
            early = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 4001
        # A bad token and a silent client are closed with 4001 too.
        async with connect(url) as ws:
            await ws.send(json.dumps({"type": "auth", "token": "sj1.forged.token"}))
            forged = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 4001
        async with connect(url) as ws:
            started = time.monotonic()
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 4001
            assert time.monotonic() - started < 5

        ws = await open_ws(url, token(auth_secret, "alice"))
        replies = []
        for bad in (
            "not json{",
            json.dumps([1, 2]),
            json.dumps({"type": "dance"}),
            json.dumps({"type": "subscribe", "channel": "planet:earth"}),
            json.dumps({"type": "subscribe", "channel": "job:x", "last_seq": "ten"}),
            b"\x00binary",
        ):
            await ws.send(bad)
            replies.append(await next_of(ws, "error"))
        # The same connection still works: ping, then a real job.
        await ws.send(json.dumps({"type": "ping", "id": 7}))
        pong = await next_of(ws, "pong")
        job_id = await pub.job("alice", words(4))
        await subscribe(ws, job_id)
        got = await read_until(ws, Received())
        await ws.close()

    assert early["type"] == "error" and early["code"] == "auth_required"
    assert forged["code"] == "bad_token"
    assert [r["code"] for r in replies] == [
        "bad_json",
        "bad_message",
        "unknown_type",
        "bad_channel",
        "bad_message",
        "bad_message",
    ]
    assert all(r["message"] for r in replies)
    assert pong == {"type": "pong", "id": 7}
    assert got.text == "".join(words(4))
