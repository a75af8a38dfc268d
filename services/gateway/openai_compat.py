"""The OpenAI-compatible surface: `POST /v1/chat/completions`, its resume
`GET /v1/chat/completions/{job_id}`, and `GET /v1/models[/{model}]`.

A completion is a job like any other: the request becomes a submission admitted by
`Gateway.admit` (limits, Idempotency-Key, priority bands). `stream: true` reads the job's
frames from its notifier, as `/api/v1/jobs/{id}/events` does, and answers them as
`chat.completion.chunk` events (`openai_chunks`); `stream: false` waits for the stored
result and answers it as a `chat.completion`. The job id is the completion's `id` and the
`X-Streamjobs-Job-Id` header. Refusals are problems turned into OpenAI error objects by
`openai_errors`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from aiohttp import web
from yarl import URL

from services.gateway.handlers import Gateway
from services.gateway.limits import StreamsRefused
from services.gateway.openai_chunks import (
    ChunkStream,
    Cursor,
    completion,
    error_object,
    final_error,
)
from services.gateway.openai_errors import openai_json
from services.gateway.openai_request import HEADER_JOB_ID, read_request
from services.gateway.proxy import Unreachable
from services.gateway.rejection import RESULTS_UNAVAILABLE, Rejection, retry_later
from shared.api import API_PREFIX
from shared.auth import SCOPE_READ, SCOPE_WRITE
from shared.http import PROBLEM_CONTENT_TYPE

log = logging.getLogger(__name__)

PING = b": ping\n\n"
# How long the notifier may give nothing (down, restarting, replaying) before the stream
# ends in an error event; until then it is asked again with the last event id, backing off.
_LOST_FOR_S = 30.0


class _ClientGone(Exception):
    """The caller closed its end of the stream."""


async def _write(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except ConnectionResetError as exc:  # aiohttp's own is a ClientError too: told apart here
        raise _ClientGone from exc


def _epoch(value: Any) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp())
    try:
        return int(datetime.fromisoformat(str(value)).timestamp())
    except ValueError:
        return int(time.time())


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


class OpenAICompat:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.wait_s = gateway.settings.gateway_openai_wait_s
        self.job_type = gateway.settings.gateway_openai_job_type

    # -- POST /v1/chat/completions -----------------------------------------------------------

    async def create(self, request: web.Request) -> web.StreamResponse:
        gw = self.gateway
        who = gw.principal(request, SCOPE_WRITE)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return Rejection(
                400, "malformed-json", "Malformed JSON", "the body is not JSON"
            ).response()
        chat = read_request(body, request.headers, default_job_type=self.job_type)
        if isinstance(chat, Rejection):
            gw.metrics.rejected.labels(chat.kind).inc()
            return chat.response()
        if not chat.stream:
            outcome = await gw.admit(who, chat.body, chat.headers)
            if isinstance(outcome, Rejection):
                return outcome.response()
            admitted = outcome[1]
            created = _epoch(admitted.entry.submitted_at)
            return await self._answer(request, admitted.job_id, chat.model, created)
        if gw.sse is None:
            return retry_later(
                "notifier-unavailable", "Live stream unavailable", "no notifier is configured", 5
            ).response()
        # The stream's slot first: a job is admitted only when it can be streamed.
        try:
            async with gw.streams.hold(who.user_id):
                outcome = await gw.admit(who, chat.body, chat.headers)
                if isinstance(outcome, Rejection):
                    return outcome.response()
                admitted = outcome[1]
                stream = ChunkStream(
                    admitted.job_id,
                    chat.model,
                    _epoch(admitted.entry.submitted_at),
                    include_usage=chat.include_usage,
                )
                return await self._stream(request, stream, eager=True)
        except StreamsRefused as refused:
            return gw.streams_refused(refused).response()

    # -- GET /v1/chat/completions/{job_id}: the answer, or the stream resumed -----------------

    async def retrieve(self, request: web.Request) -> web.StreamResponse:
        gw = self.gateway
        who = gw.principal(request, SCOPE_READ)
        job_id = request.match_info["job_id"]
        auth = request.headers.get("Authorization", "")
        try:
            view = await gw.results.forward(
                "GET", f"{API_PREFIX}/jobs/{quote(job_id, safe='')}", {"Authorization": auth}
            )
        except Unreachable:
            return RESULTS_UNAVAILABLE.response()
        if view.status != 200:
            return web.Response(status=view.status, body=view.body, headers=view.headers)
        job = orjson.loads(view.body)
        model = str(job.get("model") or (job.get("config") or {}).get("model") or "")
        created = _epoch(job.get("submitted_at"))
        streaming = request.query.get("stream", "").lower() in ("true", "1")
        if not streaming:
            return await self._answer(request, job_id, model, created)
        raw = request.query.get("starting_after") or request.headers.get("Last-Event-ID")
        try:
            after = Cursor.parse(raw) if raw else None
        except ValueError as exc:
            return Rejection(
                400,
                "bad-starting-after",
                "Bad starting_after",
                str(exc),
                [{"loc": ["query", "starting_after"], "msg": str(exc), "type": "value_error"}],
            ).response()
        if gw.sse is None:
            return retry_later(
                "notifier-unavailable", "Live stream unavailable", "no notifier is configured", 5
            ).response()
        usage = request.query.get("include_usage", "").lower() in ("true", "1")
        stream = ChunkStream(job_id, model, created, include_usage=usage, after=after)
        try:
            async with gw.streams.hold(who.user_id):
                return await self._stream(request, stream)
        except StreamsRefused as refused:
            return gw.streams_refused(refused).response()

    # -- the stream: the notifier's frames as chat.completion.chunk events -------------------

    async def _stream(
        self, request: web.Request, stream: ChunkStream, *, eager: bool = False
    ) -> web.StreamResponse:
        """`eager`: answer 200 at once (a job was just admitted: whatever happens next is an
        error event naming it, never a status the SDK would retry with a second job);
        else the notifier's refusal (404: no such job of yours) is the answer's status."""
        gw = self.gateway
        assert gw.sse is not None
        job_id = stream.job_id
        base = (gw.notifiers.sse_base(job_id) or gw.sse.base).rstrip("/")
        url = URL(f"{base}{API_PREFIX}/jobs/{quote(job_id, safe='')}/events", encoded=True)
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                HEADER_JOB_ID: job_id,
            },
        )
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60)
        failures, lost_since = 0, time.monotonic()
        try:
            if eager:
                await response.prepare(request)
            while not stream.ended:
                headers = {
                    "Authorization": request.headers.get("Authorization", ""),
                    "Accept": "text/event-stream",
                }
                if stream.last_event_id is not None:
                    headers["Last-Event-ID"] = stream.last_event_id
                try:
                    async with gw.sse.session.get(url, headers=headers, timeout=timeout) as up:
                        if up.status != 200:
                            body = await up.read()
                            if not response.prepared:
                                return web.Response(
                                    status=up.status,
                                    body=body,
                                    headers={
                                        "Content-Type": up.headers.get(
                                            "Content-Type", PROBLEM_CONTENT_TYPE
                                        ),
                                        HEADER_JOB_ID: job_id,
                                    },
                                )
                            raise aiohttp.ClientResponseError(up.request_info, (), status=up.status)
                        if not response.prepared:
                            await response.prepare(request)
                        progressed = False
                        async for frame in _frames(up.content):
                            out = PING if frame is None else stream.feed(frame)
                            if out:
                                await _write(response, out)
                                progressed = progressed or frame is not None
                            if stream.ended:
                                break
                        if not stream.ended and stream.stale:
                            await _write(response, await self._from_result(request, stream))
                        if progressed:
                            failures, lost_since = 0, time.monotonic()
                        else:
                            failures += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    failures += 1
                    log.info("notifier stream of %s dropped: %r", job_id, exc)
                if stream.ended:
                    break
                if time.monotonic() - lost_since >= _LOST_FOR_S:
                    if not response.prepared:
                        return retry_later(
                            "notifier-unavailable",
                            "Live stream unavailable",
                            "the notifier did not answer",
                            1,
                        ).response()
                    await _write(
                        response,
                        stream.error(
                            f"the live stream of job {job_id} is unavailable; resume with"
                            f" GET /v1/chat/completions/{job_id}?stream=true&starting_after="
                            f"{stream.last_event_id or ''}",
                            "server_error",
                            "stream_unavailable",
                        ),
                    )
                    break
                await asyncio.sleep(min(0.1 * 2**failures, 2.0))
        except _ClientGone:
            log.info("the client of %s left its stream", job_id)
        return response

    async def _from_result(self, request: web.Request, stream: ChunkStream) -> bytes:
        """A job the notifier no longer holds: its stored result, as one chunk."""
        status, result = await self._result(request, stream.job_id)
        if status != 200 or result is None:
            return stream.error(
                f"job {stream.job_id}: no stored result to stream ({status})",
                "server_error",
                "stream_unavailable",
            )
        return stream.from_result(result)

    # -- the answer: wait for the stored result ----------------------------------------------

    async def _result(self, request: web.Request, job_id: str) -> tuple[int, dict[str, Any] | None]:
        """The stored result once the job is final (200), or the status that ended the wait
        (504: not final in time); a result not stored yet is asked again, backing off."""
        gw = self.gateway
        path = f"{API_PREFIX}/jobs/{quote(job_id, safe='')}/result"
        auth = {"Authorization": request.headers.get("Authorization", "")}
        deadline = time.monotonic() + self.wait_s
        pause = 0.05
        while True:
            try:
                answer = await gw.results.forward("GET", path, auth)
                if answer.status == 200:
                    return 200, orjson.loads(answer.body)
                if answer.status not in (404, 409):
                    return answer.status, None
            except Unreachable as exc:
                log.info("results unreachable while waiting for %s: %s", job_id, exc)
            if time.monotonic() >= deadline:
                return 504, None
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, 1.0)

    async def _answer(
        self, request: web.Request, job_id: str, model: str, created: int
    ) -> web.Response:
        # The job ran: asking again would run a second one (the SDKs honour this header).
        headers = {HEADER_JOB_ID: job_id, "x-should-retry": "false"}
        status, result = await self._result(request, job_id)
        if result is None:
            if status == 504:
                return openai_json(
                    504,
                    error_object(
                        f"job {job_id} did not finish within {self.wait_s:g} s; it goes on:"
                        f" GET /v1/chat/completions/{job_id}",
                        "server_error",
                        "timeout",
                    ),
                    headers,
                )
            return openai_json(
                status,
                error_object(f"job {job_id}: the read side answered {status}", "server_error"),
                headers,
            )
        if result.get("status") != "completed":
            event = "job.cancelled" if result.get("status") == "cancelled" else "job.failed"
            code, body = final_error(event, job_id, {"reason": result.get("error")})
            return openai_json(code, body, headers)
        return openai_json(200, completion(job_id, created, model, result), headers)

    # -- GET /v1/models ---------------------------------------------------------------------

    async def list_models(self, _: web.Request) -> web.Response:
        names = [name for name in self.gateway.models.registry.models if name != "*"]
        return openai_json(200, {"object": "list", "data": [_model(name) for name in names]})

    async def get_model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        refused = self.gateway.models.refuse(name)
        if refused is not None:
            return Rejection(404, refused.kind, refused.title, refused.detail).response()
        return openai_json(200, _model(name))


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "streamjobs"}
