"""Response bodies of the simulator's dialects, fetched once from an in-process simulator."""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from deploy.simulator.app import create_app
from deploy.simulator.settings import SimulatorSettings

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "days"],
        },
    },
}


def chat_body(content: str, *, stream: bool = True, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": content}],
        "stream": stream,
        **fields,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def _post(path: str, body: str, dialect: str) -> tuple[int, bytes]:
    settings = SimulatorSettings(port=0, ttft_ms=0, tokens_per_second=0, dialect=dialect)
    async with TestClient(TestServer(create_app(settings))) as client:
        resp = await client.post(path, data=body, headers={"Content-Type": "application/json"})
        return resp.status, await resp.read()


@functools.cache
def _fetch(path: str, body: str, dialect: str) -> tuple[int, bytes]:
    return asyncio.run(_post(path, body, dialect))


def fetch(
    body: dict[str, Any], *, path: str = "/v1/chat/completions", default_dialect: str = "openai"
) -> tuple[int, bytes]:
    """(status, body bytes) of one request; the same request is asked once per session."""
    return _fetch(path, json.dumps(body, sort_keys=True), default_dialect)


def dialect_body(dialect: str, body: dict[str, Any]) -> bytes:
    status, raw = fetch(body, path=f"/dialects/{dialect}/v1/chat/completions")
    assert status == 200, raw
    return raw


def events(raw: bytes) -> list[Any]:
    """Each `data:` payload of an SSE body: the JSON object, or b"[DONE]"."""
    out: list[Any] = []
    for event in raw.split(b"\n\n"):
        if not event:
            continue
        data = event.removeprefix(b"data: ")
        out.append(data if data == b"[DONE]" else json.loads(data))
    return out
