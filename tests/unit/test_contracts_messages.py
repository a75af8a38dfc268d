"""Messages jobs and the request fields past schema 1: what the records carry, what the
previous schema's consumers read of them, and what the streamer sends upstream."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from services.gateway.admission import Asked, build_records
from services.gateway.admission_records import encode_record
from services.gateway.routes import build_document
from services.gateway.view import fingerprint
from services.streamer.streamed import estimate_prompt_tokens
from services.streamer.upstream import request_for
from shared.api import JobSubmission
from shared.contracts import JobAccepted, RunJob, RunJobData, parse_record, utcnow
from shared.jobtypes import load_job_types
from tests.unit import contracts_v_prev as prev

JOB_TYPES = load_job_types()

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "You answer in one sentence."},
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
    {"role": "assistant", "content": "It is sunny, 18 C."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "And this photo?"},
            {
                "type": "image_url",
                "image_url": {"url": "https://example.com/p.png", "detail": "low"},
            },
        ],
    },
]
NEW_FIELDS: dict[str, Any] = {
    "stop": ["\n\n", "END"],
    "response_format": {"type": "json_object"},
    "tools": [TOOL],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": False,
    "presence_penalty": 0.5,
    "frequency_penalty": -0.25,
    "logit_bias": {"50256": -100, "1234": 5},
    "user": "end-user-7",
    "reasoning_effort": "low",
    "max_completion_tokens": 300,
    "n": 1,
}
BODY: dict[str, Any] = {
    "messages": MESSAGES,
    "job_type": "analysis",
    "priority": "high",
    "config": {"model": "gpt-4o-mini", "temperature": 0.3, "seed": 11, **NEW_FIELDS},
    "metadata": {"ticket": "CHAT-1"},
}


def records(body: dict[str, Any]) -> tuple[bytes, bytes]:
    """The JobAccepted and RunJob records the gateway writes for `body`, as bytes."""
    submission = JobSubmission.model_validate(body)
    accepted, run = build_records(
        submission,
        user_id="alice",
        job_id=str(uuid.uuid4()),
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        submitted_at=utcnow(),
    )
    return encode_record(accepted), encode_record(run)


def test_the_previous_schema_reads_a_messages_job_with_every_new_field() -> None:
    accepted, run = records(BODY)
    old_run = prev.RunJob.model_validate_json(run)
    old_accepted = prev.JobAccepted.model_validate_json(accepted)
    for old in (old_run.data, old_accepted.data):
        # What an old consumer sees: the last user text as its prompt, schema 1's config.
        assert old.prompt == "And this photo?"
        assert old.config.model == "gpt-4o-mini" and old.config.seed == 11
        assert old.config.temperature == 0.3 and old.config.max_tokens == 512
    assert old_run.data.attempt == 1


def test_new_records_are_written_byte_for_byte_as_the_new_models_write_them() -> None:
    for wire in records(BODY):
        parsed = parse_record(wire)
        assert isinstance(parsed, JobAccepted | RunJob)
        assert parsed.to_bytes() == wire
        assert parsed.data.messages is not None and len(parsed.data.messages) == len(MESSAGES)
        assert parsed.data.options is not None
        assert parsed.data.options.model_dump(exclude_none=True) == NEW_FIELDS


def test_a_record_the_new_models_write_is_read_by_the_previous_schema() -> None:
    # The streamer re-publishes runs (retry topic) from its parsed model, not the gateway dict.
    _, run = records(BODY)
    again = parse_record(run)
    assert isinstance(again, RunJob)
    retry = again.model_copy(update={"data": again.data.model_copy(update={"attempt": 2})})
    old = prev.RunJob.model_validate_json(retry.to_bytes())
    assert old.data.attempt == 2 and old.data.prompt == "And this photo?"


def test_the_new_schema_reads_records_of_the_previous_one() -> None:
    old = prev.RunJob(
        job_id="j-1",
        data=prev.RunJobData(
            user_id="bob",
            prompt="Summarise this.",
            job_type="analysis",
            priority=prev.Priority.LOW,
            config=prev.ModelConfig(max_tokens=40, top_p=0.9),
            submitted_at=utcnow(),
        ),
    )
    parsed = parse_record(old.to_bytes())
    assert isinstance(parsed, RunJob)
    assert parsed.data.prompt == "Summarise this."
    assert parsed.data.messages is None and parsed.data.options is None
    assert parsed.data.config.max_tokens == 40 and parsed.data.config.top_p == 0.9
    request = request_for(parsed.data, JOB_TYPES)
    assert request["messages"][-1] == {"role": "user", "content": "Summarise this."}
    assert request["top_p"] == 0.9
    assert not set(NEW_FIELDS) & set(request)


def test_a_prompt_job_keeps_its_record_shape_and_fingerprint() -> None:
    body = {"prompt": "Hello", "config": {"seed": 3}, "metadata": {"a": 1}}
    accepted, _ = records(body)
    data = orjson.loads(accepted)["data"]
    assert data["prompt"] == "Hello" and data["messages"] is None and data["options"] is None
    assert data["config"] == {
        "model": "gpt-4o-mini",
        "max_tokens": 512,
        "temperature": 0.7,
        "top_p": None,
        "seed": 3,
    }
    submission = JobSubmission.model_validate(body)
    # A repeated Idempotency-Key across the upgrade compares against the same digest.
    assert Asked.of(submission).digest(submission) == fingerprint(
        "Hello", "analysis", "normal", data["config"], {"a": 1}
    )


def test_a_messages_fingerprint_changes_with_any_message_or_new_field() -> None:
    def digest(body: dict[str, Any]) -> bytes:
        submission = JobSubmission.model_validate(body)
        return Asked.of(submission).digest(submission)

    base = digest(BODY)
    other_message = {**BODY, "messages": [*MESSAGES[:-1], {"role": "user", "content": "x"}]}
    other_field = {**BODY, "config": {**BODY["config"], "presence_penalty": 0.6}}
    assert len({base, digest(other_message), digest(other_field)}) == 3
    assert digest(BODY) == base


def run_data(body: dict[str, Any]) -> RunJobData:
    _, run = records(body)
    parsed = parse_record(run)
    assert isinstance(parsed, RunJob)
    return parsed.data


def test_the_upstream_request_carries_the_messages_as_given_and_every_set_field() -> None:
    request = request_for(run_data(BODY), JOB_TYPES)
    # The messages hold a system message: the job type's system prompt is not added.
    assert request["messages"] == MESSAGES
    for name, value in NEW_FIELDS.items():
        assert request[name] == value, name
    assert request["seed"] == 11 and request["temperature"] == 0.3
    # max_completion_tokens replaces max_tokens: OpenAI refuses both in one request.
    assert "max_tokens" not in request
    assert "top_p" not in request
    assert request["stream"] is True and request["stream_options"] == {"include_usage": True}


def test_the_job_types_system_prompt_comes_first_only_without_instructions_of_its_own() -> None:
    history = [m for m in MESSAGES if m["role"] != "system"]
    request = request_for(run_data({**BODY, "messages": history}), JOB_TYPES)
    assert request["messages"][0] == {
        "role": "system",
        "content": JOB_TYPES["analysis"].system_prompt,
    }
    assert request["messages"][1:] == history
    developer = [{"role": "developer", "content": "Be terse."}, *history]
    request = request_for(run_data({**BODY, "messages": developer}), JOB_TYPES)
    assert request["messages"] == developer


def test_a_structured_job_type_keeps_forcing_its_response_format() -> None:
    body = {"messages": [{"role": "user", "content": "audit"}], "job_type": "security_analysis"}
    request = request_for(run_data(body), JOB_TYPES)
    assert request["response_format"] == JOB_TYPES["security_analysis"].response_format()


@pytest.mark.parametrize(
    ("body", "loc", "needle"),
    [
        ({"prompt": "x", "messages": [{"role": "user", "content": "x"}]}, [], "exactly one"),
        ({}, [], "exactly one"),
        ({"prompt": "x", "config": {"n": 2}}, ["config", "n"], "n is not supported"),
        ({"messages": [{"role": "robot", "content": "x"}]}, ["messages", 0], "role"),
        (
            {"messages": [{"role": "tool", "content": "x"}]},
            ["messages", 0, "tool", "tool_call_id"],
            "required",
        ),
        (
            {"messages": [{"role": "assistant"}]},
            ["messages", 0, "assistant"],
            "content or tool_calls",
        ),
        ({"messages": []}, ["messages"], "at least 1"),
        (
            {"prompt": "x", "config": {"stop": ["a", "b", "c", "d", "e"]}},
            ["config", "stop"],
            "at most 4",
        ),
        ({"prompt": "x", "config": {"presence_penalty": 3}}, ["config", "presence_penalty"], "2"),
        (
            {"prompt": "x", "config": {"logit_bias": {"abc": 1}}},
            ["config", "logit_bias", "abc"],
            "pattern",
        ),
        (
            {"prompt": "x", "config": {"tool_choice": "required"}},
            ["config"],
            "tool_choice needs tools",
        ),
        (
            {"prompt": "x", "config": {"reasoning_effort": "max"}},
            ["config", "reasoning_effort"],
            "minimal",
        ),
        ({"prompt": "x", "config": {"tools": [TOOL] * 129}}, ["config", "tools"], "at most 128"),
    ],
)
def test_a_bad_submission_names_its_field(
    body: dict[str, Any], loc: list[Any], needle: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        JobSubmission.model_validate(body)
    errors = caught.value.errors()
    assert any(list(e["loc"])[: len(loc)] == loc and needle in e["msg"] for e in errors), errors


def test_the_openapi_document_shows_messages_and_the_new_fields() -> None:
    document = build_document()
    schemas = document["components"]["schemas"]
    submission = schemas["JobSubmission"]
    assert {"prompt", "messages", "config"} <= set(submission["properties"])
    config = schemas[submission["properties"]["config"]["$ref"].rsplit("/", 1)[1]]
    assert set(NEW_FIELDS) <= set(config["properties"])
    roles = {
        schemas[ref["$ref"].rsplit("/", 1)[1]]["properties"]["role"]["const"]
        for ref in schemas["JobSubmission"]["properties"]["messages"]["anyOf"][0]["items"]["oneOf"]
    }
    assert roles == {"system", "developer", "user", "assistant", "tool"}


def test_a_cut_short_messages_job_estimates_its_prompt_from_the_text_sent() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "a" * 40},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "b" * 20},
                    {"type": "image_url", "image_url": {"url": "https://example.com/" + "c" * 500}},
                ],
            },
            {"role": "assistant", "tool_calls": MESSAGES[2]["tool_calls"]},
            {"role": "tool", "tool_call_id": "call_1", "content": "d" * 24},
        ]
    }
    arguments = len(MESSAGES[2]["tool_calls"][0]["function"]["arguments"])
    # Images carry no text: the URL is not counted as prompt characters.
    assert estimate_prompt_tokens(run_data(body), JOB_TYPES) == -(-(40 + 20 + arguments + 24) // 4)
