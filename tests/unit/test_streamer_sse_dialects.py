"""The SSE reader over each simulator dialect's bytes and over tool-call deltas, split anyhow."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploy.simulator.dialects import DIALECTS
from services.streamer.sse import (
    MalformedEvent,
    SSEReader,
    ToolCallDeltas,
    UpstreamModel,
    UpstreamUsage,
)
from services.streamer.toolcalls import assemble, merge
from tests.unit.dialect_bodies import WEATHER_TOOL, chat_body, dialect_body, fetch
from tests.unit.test_streamer_upstream_sse import read_all, split

TEXT = "Tell me [[sim tokens=9]]"
cuts = st.lists(st.integers(0, 100_000), max_size=20)


def expected_text() -> str:
    status, raw = fetch(chat_body(TEXT, stream=False))
    assert status == 200
    return str(json.loads(raw)["choices"][0]["message"]["content"])


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
@settings(max_examples=60, deadline=None)
@given(cuts=cuts)
def test_each_dialect_reads_as_its_whole_text_however_split(dialect: str, cuts: list[int]) -> None:
    body = dialect_body(dialect, chat_body(TEXT))
    reader = SSEReader("gpt-4o-mini")
    out = read_all(reader, split(body, cuts))
    assert "".join(o for o in out if isinstance(o, str)) == expected_text()
    assert reader.tokens == 9
    assert reader.finish_reason == "stop"
    # Azure's empty model name is not a model change; nothing else names another model.
    assert [o for o in out if isinstance(o, UpstreamModel)] == []
    usages = [o for o in out if isinstance(o, UpstreamUsage)]
    if dialect == "no_usage":
        assert usages == [] and reader.usage is None
    else:
        assert [u.completion_tokens for u in usages] == [9]
    assert reader.done is (dialect != "no_done")


def tool_body() -> bytes:
    body = chat_body("Two calls [[sim tool_calls=2]]", tools=[WEATHER_TOOL])
    return dialect_body("openai", body)


def expected_calls() -> list[dict[str, object]]:
    body = chat_body("Two calls [[sim tool_calls=2]]", stream=False, tools=[WEATHER_TOOL])
    status, raw = fetch(body)
    assert status == 200
    calls: list[dict[str, object]] = json.loads(raw)["choices"][0]["message"]["tool_calls"]
    return calls


@settings(max_examples=200, deadline=None)
@given(cuts=cuts)
def test_tool_call_deltas_split_across_reads_assemble_to_the_calls(cuts: list[int]) -> None:
    reader = SSEReader("gpt-4o-mini")
    out = read_all(reader, split(tool_body(), cuts))
    deltas = [d for o in out if isinstance(o, ToolCallDeltas) for d in o.deltas]
    assert [o for o in out if isinstance(o, str)] == []
    assert [c.model_dump() for c in assemble(deltas)] == expected_calls()
    # Merged as the chunker merges them (in any grouping), they still say the same.
    half = len(deltas) // 2
    merged = merge(deltas[:half]) + merge(deltas[half:])
    assert assemble(merged) == assemble(deltas)
    assert reader.finish_reason == "tool_calls"
    assert reader.tokens == len(deltas)  # one token per tool-call event, for counted usage
    for call in assemble(deltas):
        args = json.loads(call.function.arguments)
        assert isinstance(args["city"], str) and 1 <= args["days"] <= 7


def test_tool_calls_without_an_index_take_their_place_in_the_list() -> None:
    reader = SSEReader("m")
    event = {
        "choices": [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {
                            "id": "a",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        },
                        {
                            "id": "b",
                            "type": "function",
                            "function": {"name": "g", "arguments": "{}"},
                        },
                    ]
                },
            }
        ]
    }
    out = list(reader.feed(b"data: " + json.dumps(event).encode() + b"\n\n"))
    calls = assemble(d for o in out if isinstance(o, ToolCallDeltas) for d in o.deltas)
    assert [(c.id, c.function.name) for c in calls] == [("a", "f"), ("b", "g")]


@pytest.mark.parametrize(
    "tool_calls",
    [{"index": 0}, [{"index": -1}], [{"index": "0"}], [{"index": 0, "id": 5}], ["x"]],
)
def test_malformed_tool_call_deltas_are_a_malformed_event(tool_calls: object) -> None:
    event = {"choices": [{"index": 0, "delta": {"tool_calls": tool_calls}}]}
    with pytest.raises(MalformedEvent):
        list(SSEReader("m").feed(b"data: " + json.dumps(event).encode() + b"\n\n"))
