"""Tool calls stream like text: deltas over WebSocket and SSE, the assembled calls stored."""

from __future__ import annotations

import json
from typing import Any

import pytest

from deploy.localstack.stack import Stack
from tests.e2e.test_pipeline import follow, stored_result, submit
from tests.e2e.test_sse import read_sse

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]

# Some text first, then two calls: a chunk may carry text, tool-call deltas or both.
PROMPT = "What is the weather in both cities? [[sim tool_calls=2 tokens=4]]"
# The job's own tool, sent upstream as submitted: the calls name it and fit its parameters.
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def assembled(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a client builds from the frames: per index, the first id/name, arguments joined."""
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for delta in chunk.get("tool_calls") or ():
            call = calls.setdefault(
                delta["index"], {"id": None, "type": None, "name": None, "arguments": ""}
            )
            call["id"] = call["id"] or delta.get("id")
            call["type"] = call["type"] or delta.get("type")
            function = delta.get("function") or {}
            call["name"] = call["name"] or function.get("name")
            call["arguments"] += function.get("arguments") or ""
    return [
        {
            "id": c["id"],
            "type": c["type"],
            "function": {"name": c["name"], "arguments": c["arguments"]},
        }
        for _, c in sorted(calls.items())
    ]


async def test_tool_call_deltas_reach_websocket_and_sse_clients_and_the_stored_result(
    system: Stack, user_token: str
) -> None:
    urls = system.urls()
    job_id = (
        await submit(
            urls["gateway"],
            user_token,
            prompt=PROMPT,
            job_type="analysis",
            config={"model": "gpt-4o-mini", "max_tokens": 200, "tools": [WEATHER]},
        )
    )["job_id"]

    chunks, final = await follow(urls["notifier_ws"], user_token, job_id)

    assert final["event"] == "job.completed", final
    assert [c["seq"] for c in chunks] == list(range(len(chunks))), "gap or out of order"
    with_calls = [c for c in chunks if c.get("tool_calls")]
    assert len(with_calls) > 1, "tool-call deltas were not streamed over several chunks"
    indices = [d["index"] for c in with_calls for d in c["tool_calls"]]
    assert indices == sorted(indices) and set(indices) == {0, 1}  # call 0 streams, then call 1
    calls = assembled(chunks)
    assert final["data"]["tool_calls"] == calls
    assert final["data"]["finish_reason"] == "tool_calls"
    for call in calls:
        assert call["id"].startswith("call_") and call["type"] == "function"
        assert call["function"]["name"] == "get_weather"
        assert set(json.loads(call["function"]["arguments"])) == {"city"}
    text = "".join(c["text"] for c in chunks)
    assert len(text.split()) == 4

    result = await stored_result(urls["gateway"], user_token, job_id)
    assert result["tool_calls"] == calls
    assert result["response"] == text and result["finish_reason"] == "tool_calls"
    # Each delta is a completion token: text tokens plus every tool-call event.
    assert result["usage"]["completion_tokens"] == sum(c["tokens"] for c in chunks)

    events = await read_sse(f"{urls['gateway']}/api/v1/jobs/{job_id}/events", user_token)
    sse_chunks = [data for _, kind, data in events if kind == "chunk"]
    assert sse_chunks == chunks  # the same frames, the same deltas, over SSE
    assert events[-1][2]["data"]["tool_calls"] == calls
