"""The gateway's middlewares: every error as problem JSON, bounds on the request target,
and the request metrics. `Refused` carries a problem answer out of any handler."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from services.gateway.metrics import GatewayMetrics
from services.gateway.storable import check_text
from shared.http import problem

log = logging.getLogger(__name__)


class Refused(Exception):
    """A request refused before any work: carries the problem response to answer."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


_HTTP_KINDS = {
    400: "bad-request",
    404: "not-found",
    405: "method-not-allowed",
    413: "body-too-large",
}
# What the HTTP parser itself accepts, set well above the bounds the middleware answers with
# problem JSON (a longer request line or header is refused by the parser, as plain text).
PARSER_LIMITS = {"max_line_size": 64 * 1024, "max_field_size": 64 * 1024}


def bounds_middleware(max_target_bytes: int) -> Any:
    @web.middleware
    async def bound(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # The read side's own parser refuses long targets as plain text: answered here.
        if len(request.raw_path) > max_target_bytes:
            return problem(
                414,
                "target-too-long",
                "URI Too Long",
                f"the request target is longer than {max_target_bytes} bytes",
            )
        # No job id, cursor or filter holds NUL or a lone surrogate: PostgreSQL refuses them.
        values = [*request.match_info.values(), *request.query.keys(), *request.query.values()]
        if any(check_text(value, ()) for value in values):
            return problem(
                400,
                "bad-request",
                "Bad request",
                "the path or query holds NUL or a character that is not valid UTF-8",
            )
        return await handler(request)

    return bound


@web.middleware
async def problems_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error leaves as problem JSON; an unexpected one says nothing of the internals."""
    try:
        return await handler(request)
    except Refused as refused:
        return refused.response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return problem(
            exc.status, _HTTP_KINDS.get(exc.status, "http-error"), exc.reason, headers=headers
        )
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return problem(500, "internal", "Internal Server Error")


def metrics_middleware(metrics: GatewayMetrics) -> Any:
    @web.middleware
    async def measure(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        started = time.perf_counter()
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            metrics.requests.labels(request.method, route, str(status)).inc()
            metrics.latency.labels(request.method, route).observe(time.perf_counter() - started)

    return measure
