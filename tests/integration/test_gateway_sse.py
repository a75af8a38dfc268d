"""The SSE proxy bounds what one user and all users hold open: a per-user cap (429), a
bounded pool whose wait ends in a 503 with Retry-After, and slots freed when a caller leaves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from tests.integration.gateway_harness import (
    GatewayKit,
    bearer,
    kit,
)
from tests.support import wait_for

pytestmark = pytest.mark.kafka
__all__ = ["kit"]  # fixtures

JOB = "00000000-0000-4000-8000-000000000001"


class QuietNotifier:
    """A notifier stand-in whose streams say hello once, then stay silent until stopped."""

    def __init__(self) -> None:
        self.open = 0
        self.url = ""
        self._stop = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b": hello\n\n")
        self.open += 1
        try:
            await self._stop.wait()
        finally:
            self.open -= 1
        return response

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/v1/jobs/{job_id}/events", self.events)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        self._stop.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def notifier() -> AsyncIterator[QuietNotifier]:
    server = QuietNotifier()
    await server.start()
    yield server
    await server.stop()


async def opened(http: aiohttp.ClientSession, url: str, token: str) -> aiohttp.ClientResponse:
    resp = await http.get(url, headers=bearer(token))
    if resp.status == 200:
        assert await asyncio.wait_for(resp.content.readline(), 5) == b": hello\n"
    return resp


async def test_one_user_cannot_hold_every_stream_and_a_full_pool_answers_503_not_a_hang(
    kit: GatewayKit, notifier: QuietNotifier
) -> None:
    start_gateway, tokens, http, *_ = kit
    gw = await start_gateway(
        notifier_sse_url=notifier.url,
        gateway_sse_max_streams=3,
        gateway_sse_max_streams_per_user=2,
        gateway_sse_wait_s=0.5,
    )
    url = f"{gw.url}/api/v1/jobs/{JOB}/events"
    alice = [await opened(http, url, tokens("alice")) for _ in range(2)]
    assert [r.status for r in alice] == [200, 200]
    capped = await opened(http, url, tokens("alice"))
    assert capped.status == 429
    assert capped.content_type == "application/problem+json"
    assert int(capped.headers["Retry-After"]) >= 1
    assert (await capped.json())["type"].endswith("/too-many-streams")

    bob = await opened(http, url, tokens("bob"))
    assert bob.status == 200
    started = asyncio.get_running_loop().time()
    busy = await opened(http, url, tokens("carol"))
    waited = asyncio.get_running_loop().time() - started
    assert busy.status == 503
    assert busy.content_type == "application/problem+json"
    assert busy.headers["Retry-After"] == "1"
    assert (await busy.json())["type"].endswith("/streams-busy")
    assert 0.4 <= waited < 5, waited
    assert notifier.open == 3, "the refused requests never reached the notifier"

    # A caller that leaves frees its slot, even while its stream is silent.
    alice[0].close()
    assert gw.api is not None
    await wait_for(lambda: gw.api.streams.open == 2, message="the gateway let go of alice's stream")
    carol = await opened(http, url, tokens("carol"))
    assert carol.status == 200
    async with http.get(f"{gw.url}/metrics") as resp:
        metrics = await resp.text()
    assert 'streamjobs_gateway_sse_refused_total{reason="per-user"} 1.0' in metrics
    assert 'streamjobs_gateway_sse_refused_total{reason="busy"} 1.0' in metrics
    assert "streamjobs_gateway_sse_streams 3.0" in metrics
    for resp in (*alice, bob, carol):
        resp.close()
