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
from datetime import datetime
from functools import partial
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

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
from services.gateway.openai_stream import Relay
from services.gateway.proxy import Unreachable
from services.gateway.rejection import RESULTS_UNAVAILABLE, Rejection, retry_later
from shared.api import API_PREFIX
from shared.auth import SCOPE_READ, SCOPE_WRITE

log = logging.getLogger(__name__)


def _epoch(value: Any) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp())
    try:
        return int(datetime.fromisoformat(str(value)).timestamp())
    except ValueError:
        return int(time.time())


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
        gw = self.gateway
        assert gw.sse is not None
        relay = Relay(
            request,
            stream,
            session=gw.sse.session,
            base=gw.notifiers.sse_base(stream.job_id) or gw.sse.base,
            stored=partial(self._result, request, stream.job_id),
        )
        return await relay.run(eager=eager)

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
