"""aiohttp pieces every HTTP service shares: problem JSON, the route table, the error and
metrics middlewares, the ops routes (health, readiness, metrics) and serving."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

log = logging.getLogger(__name__)

PROBLEM_BASE = "https://streamjobs.dev/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"

ReadyCheck = Callable[[], Awaitable[dict[str, bool]]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H")


def problem(
    status: int,
    kind: str,
    title: str,
    detail: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    """An RFC 9457 problem response; `kind` is the stable last part of its `type` URI."""
    body: dict[str, Any] = {"type": PROBLEM_BASE + kind, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return web.json_response(
        body, status=status, content_type=PROBLEM_CONTENT_TYPE, headers=headers
    )


class Refused(Exception):
    """A request refused before any work: carries the problem response to answer."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


# -- the route table ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """One documented success answer: a model's JSON, or a media type with its schema."""

    status: int
    description: str
    model: type[BaseModel] | None = None
    many: bool = False  # a JSON array of `model`
    media: str = "application/json"
    schema: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Route(Generic[H]):
    """One route, declared once: it drives the router and, where a service publishes one,
    its OpenAPI document. `handler` is a method of the service's handlers object `H`."""

    method: str
    path: str
    handler: Callable[[H, web.Request], Awaitable[web.StreamResponse]]
    operation_id: str = ""
    summary: str = ""
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    headers: tuple[Mapping[str, Any], ...] = ()  # OpenAPI header parameters
    replies: tuple[Reply, ...] = ()
    problems: tuple[int, ...] = ()
    secured: bool = True
    tags: tuple[str, ...] = ()


def public_get(
    path: str,
    handler: Callable[[H, web.Request], Awaitable[web.StreamResponse]],
    operation_id: str,
    summary: str,
    reply: Reply,
    *tags: str,
) -> Route[H]:
    """A GET that needs no token, with its one answer."""
    return Route(
        "GET", path, handler, operation_id, summary, replies=(reply,), secured=False, tags=tags
    )


def add_routes(
    app: web.Application, routes: Iterable[Route[H]], handlers: H, *, head: bool = False
) -> None:
    """Register each route with its method bound to `handlers`; `head` also answers HEAD."""
    for route in routes:
        handler = partial(route.handler, handlers)
        if route.method == "GET":
            app.router.add_get(route.path, handler, allow_head=head)
        else:
            app.router.add_route(route.method, route.path, handler)


# -- middlewares --------------------------------------------------------------------------

Observe = Callable[[web.Request, str, int, float], None]
Translate = Callable[[web.Request, Exception], web.StreamResponse | None]


def route_of(request: web.Request) -> str:
    """The route template a request matched (a bounded metrics label), or "unmatched"."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def metrics_middleware(observe: Observe) -> Any:
    """Calls `observe(request, route, status, seconds)` once per request; 500 if it raised."""

    @web.middleware
    async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            observe(request, route_of(request), status, time.perf_counter() - started)

    return measure


def errors_middleware(translate: Translate, *, internal_kind: str, internal_title: str) -> Any:
    """Every error leaves as problem JSON: `Refused` as it carries, what `translate` knows as
    it answers; anything else is logged and a 500 that says nothing of the internals."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except Refused as refused:
            return refused.response
        except Exception as exc:
            answer = translate(request, exc)
            if answer is not None:
                return answer
            if isinstance(exc, web.HTTPException):
                raise
            log.exception("unexpected error in %s %s", request.method, request.path)
            return problem(500, internal_kind, internal_title)

    return errors


# -- ops routes ---------------------------------------------------------------------------


_STATUS = {"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]}
_READY = {
    "type": "object",
    "properties": {
        "status": {"type": "string"},
        "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
        "info": {"type": "object", "additionalProperties": {"type": "boolean"}},
    },
    "required": ["status", "checks"],
}


class Ops:
    """`/healthz` (the process is alive), `/readyz` (its dependencies answer), `/metrics`.

    `info` is reported beside the checks without deciding readiness; `before_scrape` sets
    gauges that are read rather than kept up to date.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        ready: ReadyCheck,
        *,
        info: ReadyCheck | None = None,
        before_scrape: Callable[[], None] | None = None,
    ) -> None:
        self.registry = registry
        self.ready = ready
        self.info = info
        self.before_scrape = before_scrape

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, _: web.Request) -> web.Response:
        checks = await self.ready()
        ok = all(checks.values())
        body: dict[str, Any] = {"status": "ready" if ok else "not ready", "checks": checks}
        if self.info is not None:
            body["info"] = await self.info()
        return web.json_response(body, status=200 if ok else 503)

    async def metrics(self, _: web.Request) -> web.Response:
        if self.before_scrape is not None:
            self.before_scrape()
        resp = web.Response(body=generate_latest(self.registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp


OPS_ROUTES: tuple[Route[Ops], ...] = (
    public_get(
        "/healthz",
        Ops.healthz,
        "healthz",
        "The process is alive",
        Reply(200, "alive", schema=_STATUS),
        "ops",
    ),
    Route(
        "GET",
        "/readyz",
        Ops.readyz,
        "readyz",
        "Its dependencies answer",
        replies=(Reply(200, "ready", schema=_READY), Reply(503, "not ready", schema=_READY)),
        secured=False,
        tags=("ops",),
    ),
    public_get(
        "/metrics",
        Ops.metrics,
        "metrics",
        "Prometheus metrics",
        Reply(200, "text exposition format", media="text/plain"),
        "ops",
    ),
)


def add_ops_routes(
    app: web.Application,
    registry: CollectorRegistry,
    ready: ReadyCheck,
    *,
    info: ReadyCheck | None = None,
    before_scrape: Callable[[], None] | None = None,
    head: bool = True,
) -> None:
    """The ops routes of `OPS_ROUTES` on `app`."""
    ops = Ops(registry, ready, info=info, before_scrape=before_scrape)
    add_routes(app, OPS_ROUTES, ops, head=head)


async def serve_http(
    app: web.Application,
    host: str,
    port: int,
    stack: AsyncExitStack,
    *,
    shutdown_timeout: float = 60.0,
) -> int:
    """Serve `app` on host:port until `stack` closes; returns the port bound (for port 0)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound: int = runner.addresses[0][1]
    return bound
