"""The simulator reports the request bodies it received: the newest few, found by a marker."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from deploy.simulator.app import create_app
from deploy.simulator.settings import SimulatorSettings


def chat(marker: str) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"say hi {marker} [[sim tokens=2]]"}],
        "stop": ["x"],
    }


async def received(client: TestClient[Any, Any], query: str = "") -> list[dict[str, Any]]:
    resp = await client.get(f"/_sim/requests{query}")
    assert resp.status == 200
    answer: dict[str, Any] = await resp.json()
    return [r["body"] for r in answer["requests"]]


async def test_the_newest_bodies_are_kept_and_found_by_what_they_contain() -> None:
    app = create_app(SimulatorSettings(keep_requests=2, ttft_ms=0, tokens_per_second=0))
    async with TestClient(TestServer(app)) as client:
        for marker in ("m-1", "m-2", "m-3"):
            resp = await client.post("/v1/chat/completions", json=chat(marker))
            assert resp.status == 200
        # Bounded: the oldest went; the body is the one sent, every field included.
        assert await received(client) == [chat("m-2"), chat("m-3")]
        assert await received(client, "?contains=m-3") == [chat("m-3")]
        assert await received(client, "?contains=m-1") == []
        assert await received(client, "?limit=1") == [chat("m-3")]
        assert (await client.get("/_sim/requests?limit=0")).status == 400
        # Refused requests are kept too: what a client sent is what matters here.
        assert (await client.post("/v1/chat/completions", data=b"{nope")).status == 400
        assert await received(client, "?limit=1") == ["{nope"]
        await client.post("/_sim/reset")
        assert await received(client) == []


async def test_no_body_is_kept_when_keeping_is_off() -> None:
    app = create_app(SimulatorSettings(keep_requests=0, ttft_ms=0, tokens_per_second=0))
    async with TestClient(TestServer(app)) as client:
        assert (await client.post("/v1/chat/completions", json=chat("m"))).status == 200
        assert await received(client) == []
