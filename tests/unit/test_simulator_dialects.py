"""The simulator's dialects of other servers, and its tool calls, read off the wire."""

from __future__ import annotations

import json

import pytest

from deploy.simulator.dialects import DIALECTS
from deploy.simulator.settings import SimulatorSettings
from tests.unit.dialect_bodies import WEATHER_TOOL, chat_body, dialect_body, events, fetch

TEXT = "Say something [[sim tokens=7]]"


def chunks(raw: bytes) -> list[dict[str, object]]:
    return [e for e in events(raw) if e != b"[DONE]"]


def content(raw: bytes) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or ""  # type: ignore[index]
        for c in chunks(raw)
        if c["choices"]
    )


def whole_text() -> str:
    status, raw = fetch(chat_body(TEXT, stream=False))
    assert status == 200
    return str(json.loads(raw)["choices"][0]["message"]["content"])


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_every_dialect_streams_the_same_text_as_the_plain_completion(dialect: str) -> None:
    raw = dialect_body(dialect, chat_body(TEXT))
    assert content(raw) == whole_text()
    assert [c["choices"][0]["finish_reason"] for c in chunks(raw) if c["choices"]][-1] == "stop"


def test_no_usage_sends_no_usage_chunk_even_when_asked() -> None:
    assert not [c for c in chunks(dialect_body("no_usage", chat_body(TEXT))) if c.get("usage")]
    assert [c for c in chunks(dialect_body("openai", chat_body(TEXT))) if c.get("usage")]


def test_role_first_sends_a_role_only_chunk_before_any_content() -> None:
    first = chunks(dialect_body("role_first", chat_body(TEXT)))[0]
    assert first["choices"][0]["delta"] == {"role": "assistant"}  # type: ignore[index]


def test_empty_choices_opens_with_azure_prompt_filter_and_interleaves_empty_chunks() -> None:
    all_chunks = chunks(dialect_body("empty_choices", chat_body(TEXT)))
    first = all_chunks[0]
    assert first["choices"] == [] and first["model"] == "" and "prompt_filter_results" in first
    body = all_chunks[1:-1]  # the last one is the usage chunk, which has no choices either
    assert sum(1 for c in body if c["choices"] == []) >= 2


def test_no_done_ends_the_body_without_done() -> None:
    raw = dialect_body("no_done", chat_body(TEXT))
    assert b"[DONE]" not in raw and chunks(raw)[-1].get("usage")
    assert b"[DONE]" in dialect_body("openai", chat_body(TEXT))


def test_vendor_fields_add_fields_openai_clients_do_not_know() -> None:
    for chunk in chunks(dialect_body("vendor_fields", chat_body(TEXT))):
        assert {"service_tier", "obfuscation", "x_groq", "provider"} <= set(chunk)


def test_an_unknown_dialect_is_a_404_naming_the_known_ones() -> None:
    status, raw = fetch(chat_body(TEXT), path="/dialects/nope/v1/chat/completions")
    assert status == 404 and b"no_usage" in raw


def test_sim_dialect_sets_the_dialect_of_the_plain_path() -> None:
    status, raw = fetch(chat_body(TEXT), default_dialect="no_done")
    assert status == 200 and b"[DONE]" not in raw
    with pytest.raises(ValueError, match="dialect"):
        SimulatorSettings(dialect="nope")


def tool_deltas(raw: bytes) -> list[dict[str, object]]:
    return [
        d
        for c in chunks(raw)
        if c["choices"]
        for d in c["choices"][0]["delta"].get("tool_calls") or ()  # type: ignore[index]
    ]


def test_a_request_with_tools_streams_a_call_whose_arguments_fit_the_schema() -> None:
    raw = dialect_body("openai", chat_body("Weather in Paris?", tools=[WEATHER_TOOL]))
    deltas = tool_deltas(raw)
    first = deltas[0]
    assert first["id"] and first["type"] == "function"
    assert first["function"] == {"name": "get_weather", "arguments": ""}
    assert all(set(d) == {"index", "function"} for d in deltas[1:]) and len(deltas) > 2
    args = json.loads("".join(d["function"]["arguments"] for d in deltas))  # type: ignore[index]
    assert isinstance(args["city"], str) and 1 <= args["days"] <= 7
    finish = [c["choices"][0]["finish_reason"] for c in chunks(raw) if c["choices"]]
    assert finish[-1] == "tool_calls"
    assert content(raw) == ""
    status, whole = fetch(chat_body("Weather in Paris?", stream=False, tools=[WEATHER_TOOL]))
    message = json.loads(whole)["choices"][0]["message"]
    assert status == 200 and message["content"] is None
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == args


def test_tool_choice_none_and_a_zero_directive_answer_with_text() -> None:
    for body in (
        chat_body("Weather? [[sim tokens=5]]", tools=[WEATHER_TOOL], tool_choice="none"),
        chat_body("Weather? [[sim tokens=5 tool_calls=0]]", tools=[WEATHER_TOOL]),
    ):
        raw = dialect_body("openai", body)
        assert tool_deltas(raw) == [] and content(raw)


def test_a_directive_asks_for_calls_without_tools_and_text_may_come_first() -> None:
    raw = dialect_body("openai", chat_body("Look it up [[sim tool_calls=2 tokens=3]]"))
    deltas = tool_deltas(raw)
    assert sorted({d["index"] for d in deltas}) == [0, 1]  # type: ignore[type-var]
    assert [d["function"]["name"] for d in deltas if d.get("id")] == ["lookup", "lookup"]  # type: ignore[index]
    assert len(content(raw).split()) == 3
    usage = [c["usage"] for c in chunks(raw) if c.get("usage")][-1]
    assert usage["completion_tokens"] == 3 + len(deltas)  # type: ignore[index]


def test_a_named_tool_choice_calls_that_tool_and_an_undeclared_one_is_refused() -> None:
    other = {"type": "function", "function": {"name": "other", "parameters": {}}}
    named = {"type": "function", "function": {"name": "other"}}
    raw = dialect_body("openai", chat_body("x", tools=[WEATHER_TOOL, other], tool_choice=named))
    first = tool_deltas(raw)[0]
    assert first["function"] == {"name": "other", "arguments": ""}
    missing = {"type": "function", "function": {"name": "missing"}}
    status, _ = fetch(chat_body("x", tools=[WEATHER_TOOL], tool_choice=missing))
    assert status == 400


@pytest.mark.parametrize("tools", [{"a": 1}, [{"type": "function"}], [{"function": {}}]])
def test_malformed_tools_are_a_400(tools: object) -> None:
    status, raw = fetch(chat_body("x", tools=tools))
    assert status == 400 and b"tools" in raw
