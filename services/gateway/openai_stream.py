"""One job's chunks relayed from its notifier to an OpenAI stream client.

The gateway reads the notifier's server-sent events of the job (as the `/events` proxy
does, the caller's token forwarded), translates each frame (`openai_chunks.ChunkStream`)
and writes the result. A notifier that drops, restarts or answers nothing is asked again
with the last event id sent, backing off, for up to `LOST_FOR_S` without progress; the
client's one response goes on without a gap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from aiohttp import web
from yarl import URL

from services.gateway.openai_chunks import ChunkStream
from services.gateway.openai_request import HEADER_JOB_ID
from services.gateway.rejection import retry_later
from shared.api import API_PREFIX
from shared.http import PROBLEM_CONTENT_TYPE

log = logging.getLogger(__name__)

PING = b": ping\n\n"
# How long the notifier may give nothing (down, restarting, replaying) before the stream
# ends in an error event naming where to resume.
LOST_FOR_S = 30.0
_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60)

# The stored result of the job: (200, result), or the status that ended the wait.
StoredResult = Callable[[], Awaitable[tuple[int, dict[str, Any] | None]]]


class _ClientGone(Exception):
    """The caller closed its end of the stream."""


class _Refused(Exception):
    """The notifier answered with an error status before any frame."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


async def _frames(content: aiohttp.StreamReader) -> AsyncIterator[dict[str, Any] | None]:
    """The notifier's SSE frames, decoded; None for a keep-alive comment."""
    data: list[bytes] = []
    async for raw in content:
        line = raw.rstrip(b"\r\n")
        if line.startswith(b":"):
            yield None
        elif line.startswith(b"data:"):
            data.append(line[5:].lstrip(b" "))
        elif not line and data:
            frame = orjson.loads(b"\n".join(data))
            data = []
            if isinstance(frame, dict):
                yield frame


class Relay:
    """One client's stream: `run` answers it, whatever the notifier does meanwhile."""

    def __init__(
        self,
        request: web.Request,
        stream: ChunkStream,
        *,
        session: aiohttp.ClientSession,
        base: str,
        stored: StoredResult,
    ) -> None:
        self.request = request
        self.stream = stream
        self.session = session
        self.stored = stored
        job = quote(stream.job_id, safe="")
        self.url = URL(f"{base.rstrip('/')}{API_PREFIX}/jobs/{job}/events", encoded=True)
        self.response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                HEADER_JOB_ID: stream.job_id,
            },
        )

    async def run(self, *, eager: bool) -> web.StreamResponse:
        """`eager`: answer 200 at once (a job was just admitted: whatever happens next is an
        error event naming it, never a status the SDK would retry into a second job); else
        the notifier's refusal (404: no such job of yours) is the answer."""
        stream, job_id = self.stream, self.stream.job_id
        failures, lost_since = 0, time.monotonic()
        try:
            if eager:
                await self.response.prepare(self.request)
            while not stream.ended:
                try:
                    progressed = await self._connection()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    progressed = False
                    log.info("notifier stream of %s dropped: %r", job_id, exc)
                if progressed:
                    failures, lost_since = 0, time.monotonic()
                else:
                    failures += 1
                if stream.ended:
                    break
                if time.monotonic() - lost_since >= LOST_FOR_S:
                    if not self.response.prepared:
                        return retry_later(
                            "notifier-unavailable",
                            "Live stream unavailable",
                            "the notifier did not answer",
                            1,
                        ).response()
                    await self._write(self._lost())
                    break
                await asyncio.sleep(min(0.1 * 2**failures, 2.0))
        except _Refused as refused:
            return refused.response
        except _ClientGone:
            log.info("the client of %s left its stream", job_id)
        return self.response

    async def _connection(self) -> bool:
        """One notifier connection, relayed until it ends; whether it gave anything."""
        stream = self.stream
        headers = {
            "Authorization": self.request.headers.get("Authorization", ""),
            "Accept": "text/event-stream",
        }
        if stream.last_event_id is not None:
            headers["Last-Event-ID"] = stream.last_event_id
        progressed = False
        async with self.session.get(self.url, headers=headers, timeout=_TIMEOUT) as up:
            if up.status != 200:
                body = await up.read()
                if self.response.prepared:
                    raise aiohttp.ClientResponseError(up.request_info, (), status=up.status)
                content_type = up.headers.get("Content-Type", PROBLEM_CONTENT_TYPE)
                raise _Refused(
                    web.Response(
                        status=up.status,
                        body=body,
                        headers={"Content-Type": content_type, HEADER_JOB_ID: stream.job_id},
                    )
                )
            if not self.response.prepared:
                await self.response.prepare(self.request)
            async for frame in _frames(up.content):
                out = PING if frame is None else stream.feed(frame)
                if out:
                    await self._write(out)
                    progressed = progressed or frame is not None
                if stream.ended:
                    return True
        if stream.stale:  # the notifier no longer holds this ended job
            await self._write(await self._from_result())
            return True
        return progressed

    async def _from_result(self) -> bytes:
        status, result = await self.stored()
        if status != 200 or result is None:
            return self.stream.error(
                f"job {self.stream.job_id}: no stored result to stream ({status})",
                "server_error",
                "stream_unavailable",
            )
        return self.stream.from_result(result)

    def _lost(self) -> bytes:
        job_id = self.stream.job_id
        return self.stream.error(
            f"the live stream of job {job_id} is unavailable; resume with"
            f" GET /v1/chat/completions/{job_id}?stream=true&starting_after="
            f"{self.stream.last_event_id or ''}",
            "server_error",
            "stream_unavailable",
        )

    async def _write(self, data: bytes) -> None:
        if not self.response.prepared:
            await self.response.prepare(self.request)
        try:
            await self.response.write(data)
        except ConnectionResetError as exc:  # aiohttp's own is a ClientError too: told apart
            raise _ClientGone from exc
