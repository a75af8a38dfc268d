"""The forward of reads to the results service: the only non-Kafka call between services.

Method, path, query and the caller's Authorization go in; status, body, content type and
Retry-After come back. A results service that does not answer is a 503 problem, never a
failure of anything else the gateway does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

log = logging.getLogger(__name__)

REQUEST_HEADERS = ("Authorization", "Accept", "Accept-Language", "traceparent", "If-None-Match")
RESPONSE_HEADERS = ("Content-Type", "Retry-After", "Cache-Control", "ETag", "Last-Modified")


class Unreachable(Exception):
    """The results service did not answer (refused, reset or timed out)."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    headers: CIMultiDict[str]


class ResultsClient:
    def __init__(self, base_url: str, *, timeout_s: float) -> None:
        self.base = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self.timeout,
                connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=300),
            )

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def forward(self, method: str, path_qs: str, headers: Mapping[str, str]) -> Answer:
        """One request to the results service; raises `Unreachable`."""
        assert self._session is not None, "ResultsClient.start() first"
        out = {name: headers[name] for name in REQUEST_HEADERS if name in headers}
        url = URL(f"{self.base}{path_qs}", encoded=True)
        try:
            async with self._session.request(
                method, url, headers=out, allow_redirects=False
            ) as resp:
                body = await resp.read()
                back: CIMultiDict[str] = CIMultiDict(
                    (name, resp.headers[name]) for name in RESPONSE_HEADERS if name in resp.headers
                )
                return Answer(resp.status, body, back)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}") from exc

    async def reachable(self, timeout_s: float = 1.0) -> bool:
        if self._session is None:
            return False
        try:
            async with self._session.get(
                URL(f"{self.base}/healthz"), timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False


class SseClient:
    """Streams the notifier's server-sent events of one job through to the caller."""

    FORWARDED = ("Authorization", "Accept", "Last-Event-ID", "traceparent")

    def __init__(
        self, base_url: str, *, max_connections: int = 1000, idle_check_s: float = 1.0
    ) -> None:
        self.base = base_url.rstrip("/")
        self.max_connections = max_connections
        self.idle_check_s = idle_check_s
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            # No total bound: a stream lasts as long as its job. The pool is bounded; the
            # caller holds a slot per stream, so a request never queues inside the pool.
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
                connector=aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0),
            )

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The pool of notifier connections, for a caller that reads the frames itself."""
        assert self._session is not None, "SseClient.start() first"
        return self._session

    async def stream(self, request: web.Request, base: str | None = None) -> web.StreamResponse:
        """Proxy to `base` (else the client's own); raises `Unreachable` when it does not
        answer at all."""
        base = base.rstrip("/") if base else self.base
        assert self._session is not None, "SseClient.start() first"
        out = {name: request.headers[name] for name in self.FORWARDED if name in request.headers}
        try:
            upstream = await self._session.get(
                URL(f"{base}{request.rel_url.raw_path_qs}", encoded=True), headers=out
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}") from exc
        async with upstream:
            if upstream.status != 200:
                return web.Response(
                    status=upstream.status,
                    body=await upstream.read(),
                    headers={"Content-Type": upstream.headers.get("Content-Type", "")},
                )
            response = web.StreamResponse(
                status=200,
                headers={
                    "Content-Type": upstream.headers.get("Content-Type", "text/event-stream"),
                    "Cache-Control": "no-cache",
                    "X-Accel-Buffering": "no",
                },
            )
            await response.prepare(request)
            try:
                await self._copy(upstream, request, response)
            except (aiohttp.ClientError, ConnectionResetError) as exc:
                log.info("SSE stream of %s ended: %s", request.path, exc)
            return response

    async def _copy(
        self, upstream: aiohttp.ClientResponse, request: web.Request, response: web.StreamResponse
    ) -> None:
        """Copy until either side ends; a caller gone while the stream is idle frees its slot."""
        while True:
            try:
                async with asyncio.timeout(self.idle_check_s):
                    chunk = await upstream.content.readany()
            except TimeoutError:
                transport = request.transport
                if transport is None or transport.is_closing():
                    return
                continue
            if not chunk:
                return
            await response.write(chunk)
