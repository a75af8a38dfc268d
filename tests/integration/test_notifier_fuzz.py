"""A frame fuzzer against the real WebSocket endpoint, beside a client that must miss nothing.

Hypothesis draws sessions: how the client authenticates (or does not), then
arbitrary text and binary frames, client messages of every type with JSON
values of every shape in every field, huge frames, deep nesting, invalid
UTF-8, protocol pings and app pings with large payloads. Each session must end
either still answering an app ping or closed with a documented code; the
notifier never crashes or hangs, and a well-behaved subscriber on the same
notifier receives every chunk of a job streamed all along, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.integration.notifier_support import (
    DOCUMENTED_CLOSE_CODES,
    Received,
    notifier_settings,
    open_ws,
    publisher,
    read_until,
    running_notifier,
    subscribe,
    token,
    ws_url,
)

pytestmark = pytest.mark.kafka

FIELDS = ("type", "token", "channel", "last_seq", "attempt", "id")
TYPES = ("auth", "subscribe", "unsubscribe", "ping")
PING_IDS = itertools.count()
SPECIAL = ("\ud800", "\udfff", "\x00", "\\", '"', "\u2028", "é", "\U0001f600", "job:", "user:")

texts = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=40),
    st.lists(st.sampled_from(SPECIAL), max_size=6).map("".join),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=12),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(),
    texts,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)


def channels(job_id: str) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from([f"job:{job_id}", "user:alice", "user:bob", f"job:{uuid.uuid4()}"]),
        st.builds(lambda kind, ident: kind + ident, st.sampled_from(["job:", "user:"]), texts),
    )


def messages(job_id: str) -> st.SearchStrategy[dict[str, Any]]:
    value = st.one_of(json_values, channels(job_id))
    return st.builds(
        lambda kind, fields, extra: {**extra, **fields, "type": kind},
        st.one_of(st.sampled_from(TYPES), json_values),
        st.dictionaries(st.sampled_from(FIELDS[1:]), value, max_size=5),
        st.dictionaries(texts, json_values, max_size=2),
    )


# Frames that end a session at once (too big, invalid UTF-8): at most one, last, so that
# most sessions go deep into the frames an authenticated session keeps answering.
ENDING = st.one_of(
    st.none(),
    st.none(),
    st.tuples(st.just("huge"), st.integers(min_value=70_000, max_value=300_000)),
    st.tuples(st.just("bad_utf8"), st.binary(min_size=1, max_size=20)),
)


def frames(job_id: str) -> st.SearchStrategy[tuple[str, Any]]:
    message = st.tuples(st.just("json"), messages(job_id))
    return st.one_of(
        message,
        message,
        message,
        st.tuples(st.just("text"), texts),
        st.tuples(st.just("binary"), st.binary(max_size=300)),
        st.tuples(st.just("nested"), st.integers(min_value=100, max_value=60_000)),
        st.tuples(st.just("ping"), st.binary(max_size=117)),  # + 8 bytes to keep each unique
        st.tuples(st.just("big_ping"), st.integers(min_value=1000, max_value=60_000)),
    )


async def send_frame(ws: ClientConnection, kind: str, payload: Any) -> None:
    if kind == "json":
        await ws.send(json.dumps(payload))  # ASCII: lone surrogates travel as \ud800 escapes
    elif kind == "text":
        await ws.send(payload.encode("utf-8", "surrogatepass"), text=True)
    elif kind == "binary":
        await ws.send(payload)
    elif kind == "huge":
        await ws.send("x" * payload)
    elif kind == "nested":
        await ws.send("[" * payload)
    elif kind == "bad_utf8":
        await ws.send(b"\xff" + payload, text=True)
    elif kind == "ping":
        await ws.ping(next(PING_IDS).to_bytes(8) + payload)  # the library refuses a repeated one
    else:
        await ws.send(json.dumps({"type": "ping", "id": "x" * payload}))


async def session(url: str, first: str | None, sent: list[tuple[str, Any]]) -> int | None:
    """One fuzzed connection; None if it still answers at the end, else its close code."""
    async with connect(url, max_size=None, open_timeout=10) as ws:
        with contextlib.suppress(ConnectionClosed):
            if first is not None:
                await ws.send(json.dumps({"type": "auth", "token": first}))
            for kind, payload in sent:
                await send_frame(ws, kind, payload)
            await ws.send(json.dumps({"type": "ping", "id": "end"}))
            async with asyncio.timeout(20):  # no hang: an answer or a close within this time
                while True:
                    raw = await ws.recv()
                    if isinstance(raw, str) and json.loads(raw) == {"type": "pong", "id": "end"}:
                        return None
        return ws.close_code


# Hypothesis draws in a worker thread while the Kafka clients on the test's loop use `random`
# (retry jitter); it takes that for use inside a strategy. Only that warning is muted.
@pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)
async def test_fuzzed_frames_never_crash_or_hang_and_a_subscriber_misses_no_chunk(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    job_id = str(uuid.uuid4())
    config = notifier_settings(kafka_bootstrap, topic_prefix, auth_secret)
    reader = token(auth_secret, "alice")
    firsts = st.one_of(
        st.just(reader),
        st.just(reader),
        st.just(reader),
        st.just(token(auth_secret, "mallory")),
        st.sampled_from([None, token(auth_secret, "alice", "jobs:write")]),
        texts,
    )
    async with (
        running_notifier(config) as service,
        publisher(kafka_bootstrap, topic_prefix) as pub,
    ):
        url = ws_url(service)
        await pub.accepted(job_id, "alice")
        await pub.flush()
        watcher = await open_ws(url, token(auth_secret, "alice"))
        await subscribe(watcher, job_id)
        seen = asyncio.create_task(read_until(watcher, Received(), timeout=110))

        streamed: list[str] = []
        stop = asyncio.Event()

        async def stream() -> None:
            while not stop.is_set():
                text = f"c{len(streamed)} "
                await pub.chunk(job_id, len(streamed), text)
                streamed.append(text)
                await pub.flush()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.02)

        streamer = asyncio.create_task(stream())
        outcomes: list[int | None] = []
        main_loop = asyncio.get_running_loop()

        @settings(
            max_examples=60,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: the whole test stays bounded
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(first=firsts, sent=st.lists(frames(job_id), max_size=10), last=ENDING)
        def fuzz(
            first: str | None, sent: list[tuple[str, Any]], last: tuple[str, Any] | None
        ) -> None:
            if last is not None:
                sent = [*sent, last]
            # The notifier runs on the test's loop; each session is a coroutine run there too.
            code = asyncio.run_coroutine_threadsafe(session(url, first, sent), main_loop).result()
            outcomes.append(code)
            assert code is None or code in DOCUMENTED_CLOSE_CODES, f"undocumented close {code}"

        await asyncio.to_thread(fuzz)
        stop.set()
        await streamer
        await pub.completed(job_id, streamed)
        await pub.flush()
        got = await seen
        await watcher.close()
        # The Kafka reader and the sweep loop still run.
        alive = all(not task.done() for task in service._background._tasks)

    assert got.seqs == list(range(len(streamed))), "the subscriber missed or repeated a chunk"
    assert got.text == "".join(streamed)
    assert len(outcomes) >= 60
    assert None in outcomes and any(code is not None for code in outcomes)
    assert alive
