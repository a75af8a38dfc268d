"""Writes what the hub queued for WebSocket clients, once per event-loop turn and client.

A Kafka batch queues its frames for many clients without awaiting; the flush that
follows (the reader calls it at the end of each batch, the event loop at the end of
any other turn that queued frames) hands each client's frames to its socket in one
write, so a client that gets several chunks of one batch costs one system call. A client
whose outbox fills within the batch is written at once (`write_now`): one fetch can
bring more of a job's chunks than the outbox bound, and a client that reads is not
a slow one for that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from services.notifier.client import Client
from services.notifier.connection import BoundedConnection

log = logging.getLogger(__name__)


class Flusher:
    __slots__ = ("_conns", "_due", "_on_sent", "_scheduled")

    def __init__(
        self, conns: Mapping[Client, BoundedConnection], on_sent: Callable[[int], None]
    ) -> None:
        self._conns = conns
        self._on_sent = on_sent
        self._due: list[Client] = []
        self._scheduled = False

    def mark(self, client: Client) -> None:
        """`client` has frames to write (or a close to start): write them at the turn's end."""
        if client.marked:
            return
        client.marked = True
        self._due.append(client)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def write_now(self, client: Client) -> None:
        """Write `client`'s outbox before the turn ends, as far as its socket takes it."""
        written = self._write(client)
        if written:
            self._on_sent(written)

    def flush(self) -> None:
        self._scheduled = False
        due, self._due = self._due, []
        written = 0
        for client in due:
            client.marked = False
            written += self._write(client)
        if written:
            self._on_sent(written)

    def _write(self, client: Client) -> int:
        conn = self._conns.get(client)
        if conn is None:
            return 0
        try:
            return conn.write_outbox()
        except (OSError, RuntimeError):
            # The socket broke under the write: that client is gone, the others are served.
            log.warning("write to a WebSocket client failed", exc_info=True)
            conn.transport.abort()
            return 0
