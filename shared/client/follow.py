"""`follow(job_id)`: a job's chunks and lifecycle events, to its final event, over the
notifier's WebSocket, resumed by (attempt, seq) across drops and notifier restarts, and over
server-sent events (the gateway's `/events`) when the WebSocket cannot be reached.

Each connection subscribes from the last chunk handed on (`Position`), so the caller sees
every chunk once, in order, whatever was streamed while it was away. A `resync` for history
the notifier no longer holds is caught up over REST (the text so far); a `redirect` moves
to the notifier instance that serves the job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson

from shared.api import JobResult, StreamSnapshot
from shared.client.errors import CannotConnect, Forbidden, NotFound, Unauthorized, from_answer
from shared.client.stream import Chunk, Event, Gap, Position

log = logging.getLogger(__name__)

Item = Chunk | Event

# Errors the notifier ends a subscription with, and what they mean to the caller; any
# other error (too many connections, no URL for the serving instance) is worth a retry.
_REFUSALS: dict[str, Callable[[str], Exception]] = {
    "forbidden": lambda m: NotFound(404, {"title": "Job not found", "detail": m}),
    "auth_required": lambda m: Unauthorized(401, {"title": "Unauthorized", "detail": m}),
    "bad_token": lambda m: Unauthorized(401, {"title": "Unauthorized", "detail": m}),
    "token_revoked": lambda m: Unauthorized(401, {"title": "Unauthorized", "detail": m}),
    "insufficient_scope": lambda m: Forbidden(403, {"title": "Forbidden", "detail": m}),
}
_CLOSE_REFUSALS = {4001: "bad_token", 4403: "insufficient_scope"}
MAX_REDIRECTS = 3
# What the socket or stream raises when the other end is gone or not there yet.
_LOST = (aiohttp.ClientError, OSError, TimeoutError)


class _Lost(Exception):
    """The connection ended before the final event: reconnect and resume."""


class _Moved(Exception):
    """The job is served elsewhere (a `redirect`): reconnect there at once."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


class _Resubscribe(Exception):
    """A `resync` of a slow client: subscribe again from the position (no backoff)."""


class Reads(Protocol):
    """The REST reads a follower catches up with."""

    async def snapshot(self, job_id: str) -> StreamSnapshot: ...

    async def result(self, job_id: str, *, wait_s: float = 0.0) -> JobResult: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """Pauses between reconnects: `first` doubling up to `longest`; a follower that has
    not been subscribed for `give_up_s` stops with the last error."""

    first: float = 0.1
    longest: float = 3.0
    give_up_s: float = 120.0
    ws_tries: int = 3  # failed WebSocket connections in a row before SSE is tried once

    def pause(self, failures: int) -> float:
        return min(self.first * 2.0 ** max(failures - 1, 0), self.longest)


class Follow:
    """Async iterator of `Chunk` and `Event` items of one job, ending after its final event.

    `reconnects` counts connections opened after the first; `transport` is the last one used
    (`"websocket"` or `"sse"`).
    """

    def __init__(
        self,
        http: aiohttp.ClientSession,
        reads: Reads,
        job_id: str,
        *,
        token: str,
        ws_url: str | None,
        sse_url: str | None,
        backoff: Backoff | None = None,
    ) -> None:
        self.http = http
        self.reads = reads
        self.job_id = job_id
        self.token = token
        self.ws_url = ws_url
        self.sse_url = sse_url
        self.backoff = backoff or Backoff()
        self.position = Position()
        self.reconnects = 0
        self.transport = ""
        self._subscribed = False

    def __aiter__(self) -> AsyncIterator[Item]:
        return self._items()

    async def _items(self) -> AsyncIterator[Item]:
        if not (self.ws_url or self.sse_url):
            raise ValueError("follow needs a WebSocket URL or the gateway's SSE URL")
        failures, connections, moves = 0, 0, 0
        lost_at = time.monotonic()
        while True:
            session = self._sse() if self._use_sse(failures) else self._ws()
            connections += 1
            self.reconnects = connections - 1
            self._subscribed = False
            try:
                async with aclosing(session) as items:
                    async for item in items:
                        yield item
                        if isinstance(item, Event) and item.final:
                            return
                reason: Exception = _Lost("the stream ended before the final event")
            except _Moved as moved:
                moves += 1
                if moves <= MAX_REDIRECTS:  # instances agree on who serves a job: one is normal
                    self.ws_url, failures = moved.url, 0
                    continue
                reason = _Lost(f"redirected {moves} times in a row, lastly to {moved.url}")
            except (_Lost, Gap) as lost:
                reason = lost
            if self._subscribed:
                failures, moves, lost_at = 0, 0, time.monotonic()
            failures += 1
            if time.monotonic() - lost_at > self.backoff.give_up_s:
                raise CannotConnect(f"job {self.job_id}: no live stream for a while: {reason}")
            pause = self.backoff.pause(failures)
            log.debug("follow %s: %s; reconnecting in %.1fs", self.job_id, reason, pause)
            await asyncio.sleep(pause)

    async def text(self) -> tuple[str, Event]:
        """Read to the end: the text of the last attempt, and the final event."""
        parts: list[str] = []
        async for item in self:
            if isinstance(item, Chunk):
                parts = [item.text] if item.replaces else [*parts, item.text]
            elif item.final:
                return "".join(parts), item
        raise RuntimeError("follow ended before the final event")  # it ends on the final event

    def _use_sse(self, failures: int) -> bool:
        if self.sse_url is None:
            return False
        if self.ws_url is None:
            return True
        tries = self.backoff.ws_tries
        return failures >= tries and failures % (tries + 1) == tries

    # -- one WebSocket connection ---------------------------------------------------------

    async def _ws(self) -> AsyncGenerator[Item, None]:
        assert self.ws_url is not None
        self.transport = "websocket"
        try:
            async with self.http.ws_connect(
                self.ws_url, heartbeat=15.0, timeout=aiohttp.ClientWSTimeout(ws_close=2.0)
            ) as ws:
                await ws.send_str(orjson.dumps({"type": "auth", "token": self.token}).decode())
                await ws.send_str(orjson.dumps(self.position.subscribe(self.job_id)).decode())
                async for message in ws:
                    if message.type is not aiohttp.WSMsgType.TEXT:
                        continue  # the notifier sends text frames only; close ends the loop
                    try:
                        async for item in self._on_frame(orjson.loads(message.data)):
                            yield item
                    except _Resubscribe:
                        await ws.send_str(
                            orjson.dumps(self.position.subscribe(self.job_id)).decode()
                        )
                code = ws.close_code
        except _LOST as exc:
            raise _Lost(f"WebSocket {self.ws_url}: {exc!r}") from None
        refusal = _CLOSE_REFUSALS.get(code or 0)
        if refusal is not None:
            raise _REFUSALS[refusal](f"the notifier closed the connection ({code})")
        raise _Lost(f"WebSocket closed ({code})")

    # -- one server-sent events stream ----------------------------------------------------

    async def _sse(self) -> AsyncGenerator[Item, None]:
        assert self.sse_url is not None
        self.transport = "sse"
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Accept": "text/event-stream",
            "Last-Event-ID": self.position.last_event_id,
        }
        # No total timeout: a stream lasts as long as its job; idle ones get a ping comment.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60)
        try:
            async with self.http.get(self.sse_url, headers=headers, timeout=timeout) as resp:
                if resp.status != 200:
                    error = from_answer(resp.status, await _json_or_none(resp), resp.headers)
                    if error.retriable or resp.status >= 500:
                        raise _Lost(f"SSE {resp.status}: {error}")
                    raise error
                data: list[bytes] = []
                async for line in resp.content:
                    line = line.rstrip(b"\r\n")
                    if line.startswith(b"data:"):
                        data.append(line[5:].lstrip(b" "))
                    elif not line and data:
                        frame = orjson.loads(b"\n".join(data))
                        data = []
                        async for item in self._on_frame(frame):
                            yield item
        except _Resubscribe:
            return  # the stream ends after a resync anyway: the next one resumes
        except _LOST as exc:
            raise _Lost(f"SSE {self.sse_url}: {exc!r}") from None

    # -- frames, whichever way they came ----------------------------------------------------

    async def _on_frame(self, frame: dict[str, Any]) -> AsyncIterator[Item]:
        kind = frame.get("type")
        if kind == "chunk":
            chunk = self.position.accept(
                self.job_id, frame["attempt"], frame["seq"], frame["text"], frame["tokens"]
            )
            if chunk is not None:
                yield chunk
        elif kind == "event":
            yield Event(self.job_id, str(frame["event"]), dict(frame.get("data") or {}))
        elif kind == "subscribed":
            self._subscribed = True
        elif kind == "resync":
            if frame.get("reason") != "history unavailable":
                raise _Resubscribe
            async for item in self._catch_up():
                yield item
        elif kind == "redirect":
            raise _Moved(str(frame["url"]))
        elif kind == "error":
            code, message = str(frame.get("code")), str(frame.get("message", ""))
            refusal = _REFUSALS.get(code)
            if refusal is not None:
                raise refusal(message)
            raise _Lost(f"notifier error {code}: {message}")

    async def _catch_up(self) -> AsyncIterator[Item]:
        """The notifier lacks chunks this follower needs: the text so far over REST, and
        the final event from the stored result when the job has ended."""
        snapshot = await self.reads.snapshot(self.job_id)
        if self.position.is_behind(snapshot.attempt, snapshot.last_seq):
            yield self.position.jump(
                self.job_id, snapshot.attempt, snapshot.last_seq, snapshot.text, snapshot.tokens
            )
        if snapshot.status.is_final:
            result = await self.reads.result(self.job_id, wait_s=30.0)
            data = result.model_dump(mode="json")
            yield Event(self.job_id, f"job.{result.status.value}", data)


async def _json_or_none(resp: aiohttp.ClientResponse) -> Any:
    try:
        return await resp.json(content_type=None)
    except ValueError:
        return None
