"""Helpers for the notifier's integration tests: a running notifier, records, WS clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame
from websockets.protocol import State
from websockets.uri import parse_uri

from services.notifier.app import NotifierService, create_service
from services.notifier.settings import NotifierSettings
from shared.auth import issue_token
from shared.contracts import (
    Envelope,
    JobAccepted,
    JobAcceptedData,
    JobCompleted,
    JobCompletedData,
    ModelConfig,
    TokenChunk,
    TokenChunkData,
    TokenUsage,
)
from shared.kafka import headers_for, make_producer
from shared.topics import Priority, chunks_topic, events_topic

FINAL = ("job.completed", "job.failed", "job.cancelled")


def notifier_settings(
    bootstrap: str, prefix: str, secret: str, **overrides: Any
) -> NotifierSettings:
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": bootstrap,
        "topic_prefix": prefix,
        "streamjobs_auth_secret": secret,
        "notifier_host": "127.0.0.1",
        "notifier_port": 0,
        "notifier_sse_port": 0,
        "notifier_pending_subscribe_s": 1.0,
        "log_json": False,
    }
    values.update(overrides)
    return NotifierSettings(**values)


@asynccontextmanager
async def running_notifier(settings: NotifierSettings) -> AsyncIterator[NotifierService]:
    service = create_service(settings, registry=CollectorRegistry())
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def ws_url(service: NotifierService) -> str:
    return f"ws://127.0.0.1:{service.port}/ws"


def words(n: int, tag: str = "") -> list[str]:
    """n distinct chunk texts, with spaces and a non-ASCII letter to catch encoding slips."""
    return [f"{tag}w{i}é " for i in range(n)]


@dataclass
class Publisher:
    """Publishes the records a gateway and a streamer would, keyed by job id."""

    producer: AIOKafkaProducer
    prefix: str
    sent: list[asyncio.Future[Any]] = field(default_factory=list)
    timestamp_ms: int | None = None  # set: records claim this time (e.g. older than the window)

    async def _send(self, topic: str, record: Envelope) -> None:
        fut = await self.producer.send(
            topic,
            value=record.to_bytes(),
            key=record.job_id.encode(),
            headers=headers_for(record),
            timestamp_ms=self.timestamp_ms,
        )
        self.sent.append(fut)

    async def raw(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        """Any bytes at all, as a broken or hostile producer would write them."""
        self.sent.append(await self.producer.send(topic, value=value, key=key))

    async def flush(self) -> None:
        await self.producer.flush()
        await asyncio.gather(*self.sent)
        self.sent.clear()

    async def accepted(self, job_id: str, user_id: str) -> None:
        spec = JobAcceptedData(
            user_id=user_id,
            prompt="p",
            job_type="analysis",
            priority=Priority.NORMAL,
            config=ModelConfig(),
            submitted_at=datetime.now(UTC),
        )
        await self._send(events_topic(self.prefix), JobAccepted(job_id=job_id, data=spec))

    async def chunk(self, job_id: str, seq: int, text: str, attempt: int = 1) -> None:
        now = datetime.now(UTC)
        data = TokenChunkData(
            attempt=attempt, seq=seq, text=text, tokens=1, first_token_at=now, emitted_at=now
        )
        await self._send(chunks_topic(self.prefix), TokenChunk(job_id=job_id, data=data))

    async def chunks(self, job_id: str, texts: list[str], start: int = 0, attempt: int = 1) -> None:
        for i, text in enumerate(texts[start:], start):
            await self.chunk(job_id, i, text, attempt)

    async def completed(
        self, job_id: str, texts: list[str], attempt: int = 1, response: str | None = None
    ) -> None:
        data = JobCompletedData(
            attempt=attempt,
            response="".join(texts) if response is None else response,
            model="gpt-4o-mini",
            usage=TokenUsage(completion_tokens=len(texts)),
            chunks=len(texts),
            last_seq=len(texts) - 1,
            duration_ms=1.0,
        )
        await self._send(events_topic(self.prefix), JobCompleted(job_id=job_id, data=data))

    async def job(self, user_id: str, texts: list[str], job_id: str | None = None) -> str:
        """A whole job at once: accepted, every chunk, completed."""
        job_id = job_id or str(uuid.uuid4())
        await self.accepted(job_id, user_id)
        await self.chunks(job_id, texts)
        await self.completed(job_id, texts)
        await self.flush()
        return job_id


@asynccontextmanager
async def publisher(bootstrap: str, prefix: str) -> AsyncIterator[Publisher]:
    producer = make_producer(bootstrap, linger_ms=1)
    await producer.start()
    try:
        yield Publisher(producer, prefix)
    finally:
        await producer.stop()


def token(secret: str, user: str, *scopes: str) -> str:
    return issue_token(secret, user, scopes or ("jobs:read", "jobs:write"))


DOCUMENTED_CLOSE_CODES = frozenset(
    {1000, 1001, 1002, 1007, 1009, 1013, 4001, 4003, 4008, 4029, 4400, 4403}
)


async def closed_with(ws: ClientConnection, timeout: float = 10.0) -> int | None:
    """Read until the server closes the connection; its close code."""
    async with asyncio.timeout(timeout):
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.recv()
    return ws.close_code


async def open_ws(url: str, tok: str, **kwargs: Any) -> ClientConnection:
    ws = await connect(url, **kwargs)
    await ws.send(json.dumps({"type": "auth", "token": tok}))
    reply = json.loads(await ws.recv())
    assert reply["type"] == "authenticated", reply
    return ws


async def subscribe(
    ws: ClientConnection, job_id: str, last_seq: int = -1, attempt: int | None = None
) -> None:
    msg: dict[str, Any] = {"type": "subscribe", "channel": f"job:{job_id}", "last_seq": last_seq}
    if attempt is not None:
        msg["attempt"] = attempt
    await ws.send(json.dumps(msg))


async def next_of(ws: ClientConnection, *types: str, timeout: float = 10.0) -> dict[str, Any]:
    """The next frame of one of `types`, skipping others."""
    async with asyncio.timeout(timeout):
        while True:
            msg: dict[str, Any] = json.loads(await ws.recv())
            if msg["type"] in types:
                return msg


@dataclass
class Received:
    chunks: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] | None = None
    other: list[dict[str, Any]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(c["text"] for c in self.chunks)

    @property
    def seqs(self) -> list[int]:
        return [c["seq"] for c in self.chunks]

    @property
    def last_seq(self) -> int:
        return self.chunks[-1]["seq"] if self.chunks else -1


async def read_until(
    ws: ClientConnection,
    into: Received,
    *,
    chunks: int | None = None,
    timeout: float = 20.0,
) -> Received:
    """Read frames until the final event (or until `chunks` chunks were received)."""
    async with asyncio.timeout(timeout):
        while into.final is None and (chunks is None or len(into.chunks) < chunks):
            msg = json.loads(await ws.recv())
            if msg["type"] == "chunk":
                into.chunks.append(msg)
            elif msg["type"] == "event" and msg["event"] in FINAL:
                into.final = msg
            elif msg["type"] == "error":
                raise AssertionError(f"notifier error: {msg}")
            else:
                into.other.append(msg)
    return into


class StalledClient:
    """A WebSocket client over a bare socket that writes frames and never reads after auth.

    Built on the library's sans-I/O protocol, so what it sends is exactly
    what a hostile client would: nothing reads the server's pongs or replies.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = ClientProtocol(parse_uri("ws://127.0.0.1/ws"))
        self.sent = 0

    @classmethod
    async def connect(cls, port: int, tok: str) -> StalledClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        client = cls(reader, writer)
        p = client.protocol
        p.send_request(p.connect())
        client._flush_to_socket()
        async with asyncio.timeout(10):
            while p.state is not State.OPEN:
                p.receive_data(await reader.read(65536))
                p.events_received()
            p.send_text(json.dumps({"type": "auth", "token": tok}).encode())
            client._flush_to_socket()
            while not any(
                isinstance(e, Frame) and b"authenticated" in e.data for e in p.events_received()
            ):
                p.receive_data(await reader.read(65536))
        return client

    def _flush_to_socket(self) -> None:
        data = b"".join(self.protocol.data_to_send())
        self.sent += len(data)
        self.writer.write(data)

    async def send(
        self, *, pings: int = 0, ping_data: bytes = b"", texts: list[str] | None = None
    ) -> bool:
        """Write frames; False once the server stopped taking them for 2 s (or closed)."""
        p = self.protocol
        for _ in range(pings):
            p.send_ping(ping_data)
        for text in texts or ():
            p.send_text(text.encode())
        try:
            self._flush_to_socket()
            await asyncio.wait_for(self.writer.drain(), 2.0)
        except (TimeoutError, ConnectionError):
            return False
        return True

    async def close(self) -> None:
        self.writer.transport.abort()
