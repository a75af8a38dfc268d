"""aiohttp pieces every HTTP service shares: problem JSON, health and metrics routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

PROBLEM_BASE = "https://streamjobs.dev/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"

ReadyCheck = Callable[[], Awaitable[dict[str, bool]]]


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


def add_ops_routes(app: web.Application, registry: CollectorRegistry, ready: ReadyCheck) -> None:
    """`/healthz` (the process is alive), `/readyz` (its dependencies answer), `/metrics`."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        checks = await ready()
        ok = all(checks.values())
        return web.json_response(
            {"status": "ready" if ok else "not ready", "checks": checks}, status=200 if ok else 503
        )

    async def metrics(_: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


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
