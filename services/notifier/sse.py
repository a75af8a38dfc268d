"""Server-Sent Events: `GET /api/v1/jobs/{id}/events`, for clients that cannot hold a WebSocket.

Same semantics as a `job:{id}` subscription: `Last-Event-ID: <attempt>:<seq>`
resumes after that chunk, each chunk and event carries `id: <attempt>:<seq>`.
The stream ends after the final event, and after a `resync` (the browser's
EventSource then reconnects by itself with the last id it saw). A job served by
another notifier instance is answered, once authorised, with a 307 to that
instance's SSE base URL, same path and query.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiohttp import web

from services.notifier.access import MissingScope, TokenCheck
from services.notifier.authorisation import FORBIDDEN, SubscribeError
from services.notifier.client import Client
from services.notifier.hub import Hub
from services.notifier.limits import ConnectionLimits, TooManyConnections
from services.notifier.metrics import NotifierMetrics
from services.notifier.placement import Placement
from services.notifier.protocol import MAX_ID_LENGTH, clean_text
from services.notifier.resume import parse_last_event_id
from services.notifier.settings import NotifierSettings
from shared.auth import InvalidToken, Principal
from shared.http import problem

PING = b": ping\n\n"


class SseEndpoint:
    def __init__(
        self,
        settings: NotifierSettings,
        hub: Hub,
        metrics: NotifierMetrics,
        limits: ConnectionLimits,
        tokens: TokenCheck,
        placement: Placement | None = None,
    ) -> None:
        self.settings = settings
        self.placement = placement if placement is not None else Placement()
        self.hub = hub
        self.metrics = metrics
        self.limits = limits
        self.tokens = tokens
        self._sent = metrics.frames_sent.labels("sse")
        self._gauge = metrics.connections.labels("sse")

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/jobs/{job_id}/events", self.events)

    def _principal(self, request: web.Request) -> Principal:
        token = request.query.get("token")
        if token:
            return self.tokens.reader(token)
        return self.tokens.reader_from_header(request.headers.get("Authorization"))

    async def events(self, request: web.Request) -> web.StreamResponse:
        try:
            self.limits.open()
        except TooManyConnections as exc:
            self.metrics.connections_refused.labels("process_cap").inc()
            return problem(
                503,
                "too-many-connections",
                "Too many connections",
                str(exc),
                headers={"Retry-After": "5"},
            )
        try:
            return await self._authorised(request)
        finally:
            self.limits.close()

    async def _authorised(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["job_id"]
        try:
            principal = self._principal(request)
        except InvalidToken as exc:
            self.metrics.auth_failures.labels("invalid").inc()
            return problem(
                401,
                "unauthorized",
                "Unauthorized",
                str(exc),
                headers={"WWW-Authenticate": "Bearer"},
            )
        except MissingScope as exc:
            self.metrics.auth_failures.labels("scope").inc()
            return problem(
                403,
                "insufficient-scope",
                "Insufficient scope",
                str(exc),
                headers={
                    "WWW-Authenticate": 'Bearer error="insufficient_scope", scope="jobs:read"'
                },
            )
        try:
            self.limits.bind(principal.user_id)
        except TooManyConnections as exc:
            self.metrics.connections_refused.labels("user_cap").inc()
            return problem(429, "too-many-connections", "Too many connections", str(exc))
        try:
            return await self._serve(request, job_id, principal)
        finally:
            self.limits.unbind(principal.user_id)

    async def _serve(
        self, request: web.Request, job_id: str, principal: Principal
    ) -> web.StreamResponse:
        try:
            last_seq, attempt = parse_last_event_id(
                request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
            )
        except ValueError as exc:
            return problem(400, "bad-last-event-id", "Bad Last-Event-ID", str(exc))
        if len(job_id) > MAX_ID_LENGTH or not clean_text(job_id):
            return problem(404, "job-not-found", "Job not found", FORBIDDEN)

        loop = asyncio.get_running_loop()
        # (allowed, owning instance when it is another one)
        answer: asyncio.Future[tuple[bool, int | None]] = loop.create_future()
        task = asyncio.current_task()

        def on_subscribe(_channel: str, ok: bool) -> None:
            if not answer.done():
                answer.set_result((ok, None))

        def on_redirect(_job_id: str, owner: int) -> None:
            if not answer.done():
                answer.set_result((True, owner))

        def kill(code: int, reason: str) -> None:
            client.close(code, reason)
            if task is not None:
                task.cancel()

        client = Client(
            principal,
            self.settings.notifier_queue_frames,
            kill=kill,
            on_subscribe=on_subscribe,
            on_redirect=on_redirect,
        )
        self._gauge.inc()
        try:
            try:
                self.hub.subscribe_job(client, job_id, last_seq, attempt, time.monotonic())
            except SubscribeError as exc:
                return problem(429, exc.code, exc.message)
            ok, owner = await answer
            if not ok:
                return problem(404, "job-not-found", "Job not found", FORBIDDEN)
            if owner is not None:
                return self._redirect(request, owner)
            resp = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    "X-Accel-Buffering": "no",
                }
            )
            await resp.prepare(request)
            await self._stream(resp, client, job_id)
            return resp
        finally:
            self.hub.drop(client)
            self._gauge.dec()

    def _redirect(self, request: web.Request, owner: int) -> web.StreamResponse:
        base = self.placement.sse_url(owner)
        if base is None:
            return problem(
                421,
                "wrong-instance",
                "Served by another notifier instance",
                f"job served by notifier instance {owner}, whose public URL is not configured",
                instance=owner,
            )
        # 307 keeps the method; the query (token, last_event_id) goes along unchanged, so the
        # client resumes there exactly where it would have resumed here.
        return web.Response(status=307, headers={"Location": base.rstrip("/") + request.path_qs})

    async def _stream(self, resp: web.StreamResponse, client: Client, job_id: str) -> None:
        interval = self.settings.notifier_ping_interval_s
        while True:
            try:
                async with asyncio.timeout(interval):
                    frames = await client.take()
            except TimeoutError:
                await resp.write(PING)
                continue
            if not frames:
                return
            await resp.write(b"".join(f.sse for f in frames))
            self._sent.inc(len(frames))
            # A resync ends the stream (the browser reconnects with its last id), and so
            # does a job that ended beyond the history held here: nothing more will come.
            if (
                client.resyncs
                or any(f.final for f in frames)
                or (any(f.event == "resync" for f in frames) and self.hub.finished(job_id))
            ):
                with contextlib.suppress(ConnectionResetError):
                    await resp.write_eof()
                return
