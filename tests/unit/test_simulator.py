"""The LLM simulator's decisions without I/O: directives, determinism, lengths, faults, bytes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from deploy.simulator.__main__ import build_settings
from deploy.simulator.script import (
    ChatRequest,
    Directives,
    InvalidRequest,
    Planner,
    Vocabulary,
    parse_chat_request,
    parse_directives,
    prompt_tokens,
)
from deploy.simulator.settings import SimulatorSettings
from deploy.simulator.wire import DONE, ChunkEncoder, error_body


def settings(**values: Any) -> SimulatorSettings:
    return SimulatorSettings(**values)


def chat(content: str, *, model: str = "gpt-4o-mini", **body: Any) -> ChatRequest:
    return parse_chat_request(
        {"model": model, "messages": [{"role": "user", "content": content}], **body}
    )


def planner(**values: Any) -> Planner:
    return Planner(settings(**values), Vocabulary())


def test_directive_keys_are_parsed_from_the_text() -> None:
    text = "Summarise. [[sim tokens=12 tps=40.5 ttft_ms=0 fail=429 retry_after=2 fail_times=1]]"
    assert parse_directives(text) == Directives(
        tokens=12, tps=40.5, ttft_ms=0.0, fail=429, retry_after=2.0, fail_times=1
    )
    assert parse_directives("no directive here") == Directives()
    assert parse_directives("[[sim cut_after=5]] and [[sim hang_after=3]]") == Directives(
        cut_after=5, hang_after=3
    )


@pytest.mark.parametrize(
    "text",
    ["[[sim tokns=3]]", "[[sim tokens]]", "[[sim tokens=x]]", "[[sim fail=404]]", "[[sim tps=-1]]"],
)
def test_malformed_directive_is_an_invalid_request(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_directives(text)


def test_same_request_gives_the_same_tokens_and_the_directive_does_not_seed_them() -> None:
    p = planner()
    first = p.plan(chat("Tell me about streams [[sim tokens=40]]"))
    again = p.plan(chat("Tell me about streams [[sim tokens=40]]"))
    other_directive = p.plan(chat("Tell me about streams [[sim tokens=40 tps=5 ttft_ms=1]]"))
    other_prompt = p.plan(chat("Tell me about tables [[sim tokens=40]]"))
    other_model = p.plan(chat("Tell me about streams [[sim tokens=40]]", model="gpt-4o"))
    assert len(first.tokens) == 40
    assert first.tokens == again.tokens == other_directive.tokens
    assert first.tokens != other_prompt.tokens
    assert first.tokens != other_model.tokens
    assert (
        planner(seed=7).plan(chat("Tell me about streams [[sim tokens=40]]")).tokens != first.tokens
    )


def test_tokens_are_words_with_a_leading_space_after_the_first() -> None:
    vocabulary = Vocabulary()
    tokens = planner().plan(chat("words [[sim tokens=30]]")).tokens
    texts = [vocabulary.texts[i] for i in tokens]
    assert not texts[0].startswith(" ")
    assert all(t.startswith(" ") or t == "." for t in texts[1:])
    assert vocabulary.text(tokens) == "".join(texts)


@pytest.mark.parametrize(
    ("content", "body", "count", "reason"),
    [
        ("plain", {}, 64, "stop"),  # the configured length
        ("plain", {"max_tokens": 10}, 10, "length"),
        ("plain", {"max_completion_tokens": 12, "max_tokens": 99}, 12, "length"),
        ("[[sim tokens=300]]", {}, 256, "length"),  # the default max_tokens
        ("[[sim tokens=20]]", {"max_tokens": 200}, 20, "stop"),
        ("[[sim tokens=0]]", {}, 0, "stop"),
    ],
)
def test_completion_length_is_the_lower_of_max_tokens_and_the_configured_length(
    content: str, body: dict[str, Any], count: int, reason: str
) -> None:
    plan = planner().plan(chat(content, **body))
    assert (len(plan.tokens), plan.finish_reason) == (count, reason)


def test_timing_comes_from_settings_unless_a_directive_overrides_it() -> None:
    p = planner(ttft_ms=80, tokens_per_second=100)
    assert (p.plan(chat("x")).ttft_s, p.plan(chat("x")).interval_s) == (0.08, 0.01)
    fast = p.plan(chat("x [[sim ttft_ms=0 tps=0]]"))
    assert (fast.ttft_s, fast.interval_s) == (0.0, 0.0)


def test_fail_times_applies_the_fault_only_to_the_first_n_identical_requests() -> None:
    p = planner(retry_after=3)
    request = chat("flaky [[sim fail=429 fail_times=2]]")
    statuses = [p.plan(request).error_status for _ in range(4)]
    assert statuses == [429, 429, None, None]
    assert p.plan(chat("other [[sim fail=503 fail_times=1]]")).retry_after_s == 3
    p.reset()
    assert p.plan(request).error_status == 429


def test_cut_and_hang_directives_also_obey_fail_times() -> None:
    p = planner()
    request = chat("cut once [[sim cut_after=5 fail_times=1]]", stream=True)
    assert p.plan(request).cut_after == 5
    assert p.plan(request).cut_after is None
    assert planner().plan(chat("[[sim hang_after=2]]")).hang_after == 2


def test_configured_rates_decide_faults_reproducibly() -> None:
    assert planner(rate_limit_rate=1.0, retry_after=2).plan(chat("x")).error_status == 429
    assert planner(error_rate=1.0).plan(chat("x")).error_status == 500
    dropped = planner(drop_rate=1.0).plan(chat("x [[sim tokens=10]]", stream=True))
    assert dropped.cut_after is not None and 1 <= dropped.cut_after <= 9
    assert planner(drop_rate=1.0).plan(chat("x")).cut_after is None  # streams only
    a, b = planner(error_rate=0.5, seed=3), planner(error_rate=0.5, seed=3)
    runs = [[p.plan(chat(str(i))).error_status for i in range(20)] for p in (a, b)]
    assert runs[0] == runs[1]
    assert set(runs[0]) == {None, 500}


def test_prompt_tokens_count_words_plus_four_per_message() -> None:
    request = parse_chat_request(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "three words here"}]},
            ],
        }
    )
    assert prompt_tokens(request) == 2 + 4 + 3 + 4


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"model": "m"},
        {"model": "m", "messages": []},
        {"messages": [{"role": "user", "content": "x"}]},
        {"model": "m", "messages": ["x"]},
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
    ],
)
def test_bodies_that_are_not_chat_requests_are_rejected(body: object) -> None:
    with pytest.raises(InvalidRequest):
        parse_chat_request(body)


def events(raw: bytes) -> list[Any]:
    assert raw.endswith(b"\n\n")
    out: list[Any] = []
    for event in raw.split(b"\n\n")[:-1]:
        assert event.startswith(b"data: ")
        data = event.removeprefix(b"data: ")
        out.append(data if data == b"[DONE]" else json.loads(data))
    return out


def test_chunk_encoder_writes_openai_chunks_byte_for_byte() -> None:
    enc = ChunkEncoder(completion_id="chatcmpl-1", created=7, model="m", include_usage=True)
    vocabulary = Vocabulary()
    raw = (
        enc.role()
        + enc.tokens([vocabulary.encoded[3], vocabulary.encoded[1]])
        + enc.finish("length")
        + enc.usage(9, 2)
        + DONE
    )
    role, tok1, tok2, finish, usage, done = events(raw)
    head = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 7,
        "model": "m",
        "system_fingerprint": role["system_fingerprint"],
    }

    def choice(delta: dict[str, str], reason: str | None = None) -> dict[str, Any]:
        choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]
        return {**head, "choices": choices, "usage": None}

    assert role == choice({"role": "assistant", "content": ""})
    assert tok1 == choice({"content": vocabulary.texts[3]})
    assert tok2 == choice({"content": vocabulary.texts[1]})
    assert finish == choice({}, "length")
    assert usage == {
        **head,
        "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    }
    assert done == b"[DONE]"
    plain = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=False)
    assert "usage" not in events(plain.tokens([b'"x"']))[0]


def test_error_body_has_openai_shape() -> None:
    assert error_body(429) == {
        "error": {
            "message": error_body(429)["error"]["message"],
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert error_body(400, "bad", "messages")["error"]["param"] == "messages"


def test_command_line_flags_override_sim_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIM_TTFT_MS", "20")
    monkeypatch.setenv("SIM_TOKENS_PER_SECOND", "400")
    built = build_settings(["--host", "127.0.0.1", "--port", "0", "--tps", "0"])
    assert (built.host, built.port, built.ttft_ms, built.tokens_per_second) == (
        "127.0.0.1",
        0,
        20,
        0,
    )
    with pytest.raises(SystemExit):
        build_settings(["--error-rate", "2"])


SECURITY_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "security_analysis",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "findings": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "severity": {"type": "string", "enum": ["critical", "high", "low"]},
                            "title": {"type": "string"},
                            "score": {"type": "number", "minimum": 0, "maximum": 1},
                            "gas": {"type": "integer", "minimum": 10, "maximum": 20},
                            "fixed": {"type": "boolean"},
                        },
                        "required": ["severity", "title", "score", "gas", "fixed"],
                        "additionalProperties": False,
                    },
                }
            },
            "required": ["findings"],
            "additionalProperties": False,
        },
    },
}


def test_structured_output_is_a_json_document_valid_for_the_schema() -> None:
    import jsonschema

    from deploy.simulator.jsongen import tokens

    request = chat("Audit this", response_format=SECURITY_FORMAT, max_tokens=1000)
    plan = planner().plan(request)
    assert plan.texts is not None
    text = "".join(plan.texts)
    document = json.loads(text)
    jsonschema.validate(document, SECURITY_FORMAT["json_schema"]["schema"])  # type: ignore[index]
    assert document["findings"], "at least one finding"
    assert plan.finish_reason == "stop"
    assert plan.count == len(tokens(document)) > 10
    assert planner().plan(request).texts == plan.texts  # deterministic


def test_structured_output_is_cut_at_max_tokens() -> None:
    plan = planner().plan(chat("Audit this", response_format=SECURITY_FORMAT, max_tokens=5))
    assert plan.texts is not None
    assert plan.count == 5
    assert plan.finish_reason == "length"
    with pytest.raises(ValueError):
        json.loads("".join(plan.texts))


def test_json_schema_format_without_a_schema_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequest):
        chat("x", response_format={"type": "json_schema", "json_schema": {"name": "n"}})
    assert chat("x", response_format={"type": "text"}).json_schema is None


def test_every_job_type_schema_gets_a_valid_document() -> None:
    import jsonschema

    from shared.jobtypes import load_job_types

    job_types = load_job_types()
    for job_type in job_types.values():
        fmt = job_type.response_format()
        if fmt is None:
            continue
        plan = planner().plan(chat("x", response_format=fmt, max_tokens=4000))
        assert plan.texts is not None
        text = "".join(plan.texts)
        jsonschema.validate(json.loads(text), fmt["json_schema"]["schema"])
        assert job_types.parse_response(job_type.name, text).error is None, job_type.name


def test_cached_and_reasoning_directives_shape_the_usage_details() -> None:
    from deploy.simulator.wire import usage

    plan = planner().plan(chat("Explain. [[sim tokens=10 cached=3 reasoning=4]]"))
    assert (plan.cached_tokens, plan.reasoning_tokens) == (3, 4)
    counts = usage(plan.prompt_tokens, plan.count, plan.cached_tokens, plan.reasoning_tokens)
    assert counts["prompt_tokens_details"] == {"cached_tokens": 3}
    assert counts["completion_tokens_details"] == {"reasoning_tokens": 4}
    # More cached tokens than the prompt has are capped at the prompt's.
    capped = planner().plan(chat("Explain. [[sim tokens=10 cached=999]]"))
    assert capped.cached_tokens == capped.prompt_tokens
    unasked = planner().plan(chat("Explain. [[sim tokens=10]]"))
    assert "prompt_tokens_details" not in usage(unasked.prompt_tokens, unasked.count)
