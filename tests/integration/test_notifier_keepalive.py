"""Connections without a task each: keepalive from the sweep, messages handled as received."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from tests.integration.notifier_support import (
    StalledClient,
    notifier_settings,
    open_ws,
    running_notifier,
    token,
    ws_url,
)

pytestmark = pytest.mark.kafka


async def test_a_client_that_answers_no_ping_is_closed_and_one_that_does_stays(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    settings = notifier_settings(
        kafka_bootstrap,
        topic_prefix,
        auth_secret,
        notifier_ping_interval_s=0.3,
        notifier_ping_timeout_s=0.3,
    )
    async with running_notifier(settings) as service:
        silent = await StalledClient.connect(service.port, token(auth_secret, "mallory"))
        (silent_side,) = service.ws.clients.values()
        # The library's client answers pings by itself while its loop runs.
        alive = await open_ws(ws_url(service), token(auth_secret, "alice"))
        await asyncio.wait_for(silent_side.wait_closed(), 10)
        # What the server said: the silent client never answers the close either.
        sent = silent_side.protocol.close_sent
        close_code = sent.code if sent is not None else None
        await alive.send(json.dumps({"type": "ping", "id": "still-there"}))
        async with asyncio.timeout(10):
            answer = json.loads(await alive.recv())
        still_open = alive.state is State.OPEN
        await alive.close()
        await silent.close()

    assert close_code == 1011, f"closed with {close_code}, not as a keepalive timeout"
    assert answer == {"type": "pong", "id": "still-there"}
    assert still_open


async def test_an_auth_message_sent_with_the_handshake_request_is_answered(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    settings = notifier_settings(kafka_bootstrap, topic_prefix, auth_secret)
    async with running_notifier(settings) as service:
        protocol = ClientProtocol(parse_uri(ws_url(service)))
        protocol.send_request(protocol.connect())
        auth = json.dumps({"type": "auth", "token": token(auth_secret, "alice")}).encode()
        # One write: the request and a masked auth frame, before the server's answer.
        early = Frame(Opcode.TEXT, auth).serialize(mask=True, extensions=[])
        reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer.write(b"".join(protocol.data_to_send()) + early)
        await writer.drain()
        texts: list[str] = []
        async with asyncio.timeout(10):
            while not texts:
                protocol.receive_data(await reader.read(65536))
                texts += [
                    e.data.decode()
                    for e in protocol.events_received()
                    if isinstance(e, Frame) and e.opcode is Opcode.TEXT
                ]
        writer.transport.abort()

    assert json.loads(texts[0]) == {"type": "authenticated", "user_id": "alice"}
