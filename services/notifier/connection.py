"""A WebSocket connection that stops reading from a client that has stopped reading from it.

The library answers every ping frame itself, writing the pong straight to the
socket's buffer with no bound: a client that sends pings and never reads would
grow that buffer for ever. Here, once the buffer is past the write limit
(`websockets` pauses our own sends there), the connection also pauses reading
the client's frames until the buffer has drained, so pongs stop piling up:
what the server holds for one connection stays below about the write limit
plus one socket read (256 KiB) plus one frame.
"""

from __future__ import annotations

import asyncio

from websockets.asyncio.server import ServerConnection


class BoundedConnection(ServerConnection):
    # Two independent reasons to pause reading: the library's queue of received
    # messages is full, or the client is not reading what is written to it.
    _queue_full: bool = False
    _write_full: bool = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.recv_messages.pause = self._pause_for_queue
        self.recv_messages.resume = self._resume_for_queue

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.paused and not self._write_full:
            self._write_full = True
            self._apply()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_full:
            self._write_full = False
            self._apply()

    def buffered_bytes(self) -> int:
        """Bytes written to the socket that the client has not taken yet."""
        return self.transport.get_write_buffer_size()

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
        if self._queue_full or self._write_full:
            transport.pause_reading()
        else:
            transport.resume_reading()
