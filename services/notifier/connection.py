"""A WebSocket connection that writes its client's prepared frames straight to the socket,
keeps itself alive without a task of its own, and stops reading a client that stops reading.

Frames are written as the bytes `Frame.ws` built once for every subscriber, several
in one socket write, up to the write limit at a time; past it (the transport's
high-water mark) they wait in the client's bounded outbox until the socket drains.

The library answers every ping frame itself, writing the pong straight to the
socket's buffer with no bound: a client that sends pings and never reads would
grow that buffer for ever. Here, once the buffer is past the write limit, the
connection also pauses reading the client's frames until the buffer has drained,
so pongs stop piling up: what the server holds for one connection stays below
about the write limit plus one socket read (256 KiB) plus one frame.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import Event, State

from services.notifier.client import Client

CLOSE_KEEPALIVE = CloseCode.INTERNAL_ERROR  # what the library sends when a ping goes unanswered
CLOSE_SLOW = 4008
# Closes of a client that does not read (or is gone): nothing it sends is read any more.
DEAF_CLOSES = frozenset({CLOSE_SLOW, CLOSE_KEEPALIVE})
# How long a closing connection lives when the server was given no close timeout (the
# library's None, "wait for ever"): a client that stopped reading must not hold it for ever.
CLOSE_ABORT_DEFAULT_S = 10.0
# Stands for every open connection's handshake request once it has been served: the
# library only checks that there is one, and the real one holds ~3 KB of headers.
HANDSHAKE_DONE = Request("/ws", Headers())


class BoundedConnection(ServerConnection):
    # Two independent reasons to pause reading: the library's queue of received
    # messages is full, or the client is not reading what is written to it.
    _queue_full: bool = False
    _write_full: bool = False
    _deaf: bool = False  # closing a client that does not read: read nothing more from it
    client: Client | None = None
    # Connections with frames waiting for the socket to drain (the slow-consumer sweep's).
    _stalled: set[BoundedConnection] | None = None
    _closer: asyncio.Task[None] | None = None
    _on_sent: Callable[[int], None] | None = None
    # Set once the handler attached: each message is handed over as it arrives, in the
    # protocol callback, instead of through the library's queue and a task awaiting recv().
    _on_message: Callable[[str | bytes], None] | None = None
    _on_lost: Callable[[], None] | None = None
    _parts: list[bytes] | None = None  # a fragmented message so far
    _parts_opcode = Opcode.TEXT
    last_seen = 0.0  # loop time of the last bytes the client sent (a pong included)
    pinged_at: float | None = None  # loop time of the last keepalive ping

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.recv_messages.pause = self._pause_for_queue
        self.recv_messages.resume = self._resume_for_queue
        self.last_seen = self.loop.time()

    def data_received(self, data: bytes) -> None:
        self.last_seen = self.loop.time()
        super().data_received(data)
        if self.paused and not self._write_full:
            self._write_full = True
            self._apply()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_full:
            self._write_full = False
            self._apply()
        written = self.write_outbox()
        if written and self._on_sent is not None:
            self._on_sent(written)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._stalled is not None:
            self._stalled.discard(self)
        if self._on_lost is not None:
            self._on_lost()

    def process_event(self, event: Event) -> None:
        on_message = self._on_message
        if on_message is None or not isinstance(event, Frame):
            super().process_event(event)
            return
        opcode = event.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if event.fin:
                self._deliver(opcode, bytes(event.data), on_message)
            else:
                self._parts, self._parts_opcode = [bytes(event.data)], opcode
        elif opcode is Opcode.CONT:
            # The protocol has checked the sequence and the size (max_size) of the fragments.
            if self._parts is not None:
                self._parts.append(bytes(event.data))
                if event.fin:
                    data, self._parts = b"".join(self._parts), None
                    self._deliver(self._parts_opcode, data, on_message)
        else:
            super().process_event(event)  # ping, pong, close: the library's

    def _deliver(
        self, opcode: Opcode, data: bytes, on_message: Callable[[str | bytes], None]
    ) -> None:
        if opcode is Opcode.BINARY:
            on_message(data)
            return
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:
            # As the library's recv() does: a text message that is not UTF-8 closes with 1007.
            self.shut(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
            self._on_message = None
            return
        on_message(text)

    def forget_handshake(self) -> None:
        """Drop what only the opening handshake needed: at 20,000 connections, 60 MB."""
        if self.protocol.extensions:
            # Frame.ws is framed for no extension: a negotiated one would need its own framing.
            raise RuntimeError(f"unexpected WebSocket extensions {self.protocol.extensions}")
        if self.request is not None:
            # The library's parser keeps the request object itself: its headers are emptied.
            self.request.headers.clear()
        self.request = HANDSHAKE_DONE
        self.response = None
        # An empty deque allocates a 64-slot block; nothing awaits drain() after the handshake
        # but a close, and a list does what the library asks of it (append, remove, iterate).
        self.drain_waiters = []  # type: ignore[assignment]

    def attach(
        self,
        client: Client,
        stalled: set[BoundedConnection],
        *,
        on_sent: Callable[[int], None],
        on_message: Callable[[str | bytes], None],
        on_lost: Callable[[], None],
    ) -> None:
        """From now on, frames queued for `client` are written here, and each message the
        client sends goes to `on_message` as it is received."""
        self.client = client
        self._stalled = stalled
        self._on_sent = on_sent
        self._on_message = on_message
        self._on_lost = on_lost
        # The library's receive queue is not used from now on. Frames a client sent with its
        # handshake request, before the answer, were queued there: they are handed over
        # first. Its deque (a 64-slot block) becomes a list, which does the one thing still
        # asked of it here, `append`, after a connection failed (1007) and stopped handing
        # over; nothing calls recv().
        queue = self.recv_messages.frames
        early = list(queue.queue)
        queue.queue = []  # type: ignore[assignment]
        for frame in early:
            self.process_event(frame)

    def buffered_bytes(self) -> int:
        """Bytes written to the socket that the client has not taken yet."""
        return self.transport.get_write_buffer_size()

    def write_outbox(self) -> int:
        """Write the client's queued frames until none is left or the socket is full.

        Returns how many frames were written. Once the outbox is empty, a close the
        client asked for (`Client.close`) starts.
        """
        client = self.client
        if client is None or self.protocol.state is not State.OPEN:
            return 0  # closing: nothing more is sent
        transport = self.transport
        written = 0
        budget = self.write_limit_high
        while len(client) and not self.paused and not transport.is_closing():
            frames = client.take_now(budget)
            transport.write(b"".join([frame.ws for frame in frames]))
            written += len(frames)
        if len(client):
            if client.send_started is None:
                client.send_started = time.monotonic()
                if self._stalled is not None:
                    self._stalled.add(self)
            return written
        if client.send_started is not None:
            client.send_started = None
            if self._stalled is not None:
                self._stalled.discard(self)
        if client.closing is not None:
            self.shut(*client.closing)
        return written

    def shut(self, code: int, reason: str) -> None:
        """Start the closing handshake once; the connection is gone within the close timeout."""
        if self._closer is None and self.protocol.state is State.OPEN:
            if code in DEAF_CLOSES:
                # Its close frame would come behind whatever it still floods us with; the
                # connection is aborted after the close timeout instead, and the flood is
                # not read.
                self._deaf = True
                self._apply()
            self._closer = self.loop.create_task(self.close(code, reason))
            # The library's close awaits the socket's drain before its close timeout starts:
            # a client that stopped reading would hold the connection for ever.
            limit = self.close_timeout
            self.loop.call_later(CLOSE_ABORT_DEFAULT_S if limit is None else limit, self._abort)

    def _abort(self) -> None:
        if not self.transport.is_closing():
            self.transport.abort()

    def visit_keepalive(self, now: float, interval: float, timeout: float) -> None:
        """One keepalive visit: ping a client silent for `interval`, close one that let a
        ping go unanswered for `timeout` (1011, as the library's own keepalive does).

        Any bytes from the client prove it alive, so a chatty client is never pinged.
        """
        if self.protocol.state is not State.OPEN:
            return
        pinged = self.pinged_at
        if pinged is not None and self.last_seen < pinged:
            if now - pinged >= timeout:
                self.shut(CLOSE_KEEPALIVE, "keepalive ping timeout")
            return
        if now - self.last_seen >= interval:
            # The library ignores a pong it did not ask for: last_seen alone records it.
            self.protocol.send_ping(os.urandom(4))
            self.send_data()
            self.pinged_at = now

    def _pause_for_queue(self) -> None:
        self._queue_full = True
        self._apply()

    def _resume_for_queue(self) -> None:
        self._queue_full = False
        self._apply()

    def _apply(self) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        if self._deaf or self._queue_full or self._write_full:
            transport.pause_reading()
        else:
            transport.resume_reading()
