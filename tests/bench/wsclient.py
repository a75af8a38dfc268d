"""A bare WebSocket client for the notifier bench's many idle clients (RFC 6455, text only).

Twenty thousand clients of a full library in the bench's own process would spend the
two cores the notifier needs: this one does the upgrade, sends the two masked frames
of the protocol (auth, then subscribe once auth is answered), answers pings and counts
the frames it receives, parsing no JSON beyond a prefix check.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from typing import Protocol

SUBSCRIBED = b'{"type":"subscribed"'
OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


class Counts(Protocol):
    frames: int
    subscribed: int


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked frame, as a client must send it."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = (mask * (n // 4 + 1))[:n]
    return head + mask + bytes(a ^ b for a, b in zip(payload, key, strict=True))


def server_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Take the whole (unmasked) server frames off the front of `buf`: (opcode, payload)."""
    out: list[tuple[int, bytes]] = []
    while len(buf) >= 2:
        n, at = buf[1] & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                break
            n, at = struct.unpack_from("!H", buf, 2)[0], 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, at = struct.unpack_from("!Q", buf, 2)[0], 10
        if len(buf) < at + n:
            break
        out.append((buf[0] & 0x0F, bytes(buf[at : at + n])))
        del buf[: at + n]
    return out


class BareClient(asyncio.Protocol):
    def __init__(self, host: str, path: str, token: str, job_id: str, counts: Counts) -> None:
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n\r\n"
        ).encode()
        self.auth = json.dumps({"type": "auth", "token": token}).encode()
        self.subscribe = json.dumps(
            {"type": "subscribe", "channel": f"job:{job_id}", "last_seq": -1}
        ).encode()
        self.counts = counts
        self.buf = bytearray()
        self.upgraded = False
        self.answered = False  # the auth reply came: subscribe now
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buf.startswith(b"HTTP/1.1 101"):
                self._fail(ConnectionError(bytes(self.buf[:end]).decode(errors="replace")))
                return
            del self.buf[: end + 4]
            self.upgraded = True
            self.transport.write(client_frame(OP_TEXT, self.auth))
        for opcode, payload in server_frames(self.buf):
            if opcode == OP_TEXT:
                self.counts.frames += 1
                if not self.answered:
                    self.answered = True
                    self.transport.write(client_frame(OP_TEXT, self.subscribe))
                elif payload.startswith(SUBSCRIBED):
                    self.counts.subscribed += 1
                    if not self.ready.done():
                        self.ready.set_result(None)
            elif opcode == OP_PING:
                self.transport.write(client_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                self._fail(ConnectionError(f"closed by the server: {payload[2:]!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("connection lost"))

    def _fail(self, exc: BaseException) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()


async def open_bare(
    host: str, port: int, path: str, token: str, job_id: str, counts: Counts, timeout: float
) -> asyncio.Transport:
    """A connected client subscribed to `job_id`; its transport, to abort when done."""
    loop = asyncio.get_running_loop()
    transport, client = await asyncio.wait_for(
        loop.create_connection(
            lambda: BareClient(f"{host}:{port}", path, token, job_id, counts), host, port
        ),
        timeout,
    )
    try:
        await asyncio.wait_for(client.ready, timeout)
    except BaseException:
        transport.abort()
        raise
    return transport
