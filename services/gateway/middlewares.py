"""The gateway's middlewares: the request metrics, every error as problem JSON, and bounds
on the request target."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from services.gateway.metrics import GatewayMetrics
from services.gateway.storable import check_text
from shared.http import errors_middleware, metrics_middleware, problem

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


def _http_error(_: web.Request, exc: Exception) -> web.Response | None:
    if not isinstance(exc, web.HTTPException) or exc.status < 400:
        return None
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return problem(
        exc.status, _HTTP_KINDS.get(exc.status, "http-error"), exc.reason, headers=headers
    )


problems_middleware = errors_middleware(
    _http_error, internal_kind="internal", internal_title="Internal Server Error"
)


def gateway_metrics_middleware(metrics: GatewayMetrics) -> Any:
    def observe(request: web.Request, route: str, status: int, seconds: float) -> None:
        metrics.requests.labels(request.method, route, str(status)).inc()
        metrics.latency.labels(request.method, route).observe(seconds)

    return metrics_middleware(observe)
