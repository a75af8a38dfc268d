"""Messages submissions at the real gateway over real Kafka: each bad one is a problem that
names its field and publishes nothing; a good one's records carry what was asked."""

from __future__ import annotations

from typing import Any

import pytest

from shared.contracts import JobAccepted, RunJob
from shared.topics import Priority, events_topic, job_topic
from tests.integration.gateway_harness import GatewayKit, kit, post_job, topic_records
from tests.support import wait_for
from tests.unit import contracts_v_prev as prev

pytestmark = [pytest.mark.kafka]
__all__ = ["kit"]  # fixtures

USER = {"role": "user", "content": "hello"}
BAD: list[tuple[str, dict[str, Any], int, list[Any], str]] = [
    (
        "prompt and messages",
        {"prompt": "x", "messages": [USER]},
        422,
        ["body"],
        "exactly one of `prompt` and `messages`",
    ),
    ("neither", {"job_type": "analysis"}, 422, ["body"], "exactly one of `prompt` and `messages`"),
    (
        "n=2",
        {"prompt": "x", "config": {"n": 2}},
        422,
        ["body", "config", "n"],
        "n is not supported",
    ),
    (
        "bad role",
        {"messages": [{"role": "robot", "content": "x"}]},
        422,
        ["body", "messages", 0],
        "role",
    ),
    (
        "tool message without tool_call_id",
        {"messages": [USER, {"role": "tool", "content": "42"}]},
        422,
        ["body", "messages", 1, "tool", "tool_call_id"],
        "Field required",
    ),
    (
        "too many messages",
        {"messages": [USER] * 4},
        422,
        ["body", "messages"],
        "4 messages; at most 3",
    ),
    (
        "response_format on a structured job type",
        {
            "messages": [USER],
            "job_type": "security_analysis",
            "config": {"response_format": {"type": "json_object"}},
        },
        422,
        ["body", "config", "response_format"],
        "sets its own response_format",
    ),
    (
        "messages text past the prompt bound",
        {
            "messages": [
                USER,
                {"role": "assistant", "content": "y" * 60},
                {**USER, "content": "z" * 40},
            ]
        },
        413,
        ["body", "messages"],
        "at most 100 characters",
    ),
    (
        "NUL in a message",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "a\u0000b"}]}]},
        422,
        ["body", "messages", 0, "content", 0, "text"],
        "NUL",
    ),
]


async def test_bad_messages_submissions_are_problems_naming_the_field_and_publish_nothing(
    kit: GatewayKit,
) -> None:
    start_gateway, tokens, http, kafka_bootstrap, topic_prefix = kit
    gw = await start_gateway(gateway_max_messages=3, gateway_max_prompt_chars=100)
    token = tokens("erin")
    for name, body, status, loc, msg in BAD:
        got, problem, headers = await post_job(http, gw.url, token, body)
        assert got == status, (name, problem)
        assert headers["Content-Type"].startswith("application/problem+json"), name
        assert any(e["loc"] == loc and msg in e["msg"] for e in problem["errors"]), (name, problem)

    records = await topic_records(kafka_bootstrap, topic_prefix)
    assert {topic: len(values) for topic, values in records.items() if values} == {}


async def test_a_messages_job_is_published_with_its_messages_and_options(kit: GatewayKit) -> None:
    start_gateway, tokens, http, kafka_bootstrap, topic_prefix = kit
    gw = await start_gateway()
    messages = [
        {"role": "developer", "content": "Answer in French."},
        USER,
        {"role": "assistant", "content": "Bonjour !"},
        {"role": "user", "content": "How are you?"},
    ]
    body = {"messages": messages, "priority": "high", "config": {"stop": "END", "user": "u-1"}}
    status, answer, _ = await post_job(http, gw.url, tokens("erin"), body)
    assert status == 202, answer

    records = await topic_records(kafka_bootstrap, topic_prefix)
    (run, _), *more = records[job_topic(Priority.HIGH, topic_prefix)]
    assert not more
    accepted = [r for r, _ in records[events_topic(topic_prefix)] if isinstance(r, JobAccepted)]
    for record in (run, *accepted):
        assert isinstance(record, RunJob | JobAccepted)
        assert record.job_id == answer["job_id"]
        data = record.data
        assert [m.model_dump(exclude_none=True) for m in data.messages or []] == messages
        assert data.options is not None
        assert data.options.model_dump(exclude_none=True) == {"stop": "END", "user": "u-1"}
        # The consumer of the previous schema reads it: the last user text as its prompt.
        old = (prev.RunJob if isinstance(record, RunJob) else prev.JobAccepted).model_validate_json(
            record.to_bytes()
        )
        assert old.data.prompt == "How are you?"
    assert len(accepted) == 1


async def test_an_idempotency_key_compares_the_messages_and_fields_across_instances(
    kit: GatewayKit,
) -> None:
    start_gateway, tokens, http, _, _ = kit
    one, two = await start_gateway(), await start_gateway()
    alice = tokens("alice")
    key = {"Idempotency-Key": "chat-7"}
    body = {
        "messages": [{"role": "system", "content": "Be brief."}, USER],
        "config": {"stop": ["END"], "logit_bias": {"42": 3}, "presence_penalty": 1},
    }
    status, first, _ = await post_job(http, one.url, alice, body, **key)
    assert status == 202, first
    await wait_for(lambda: two.view.job(first["job_id"]), message="instance two sees the job")
    # Another instance, and one started later (it reads the job back from the events topic).
    three = await start_gateway()
    for gw in (one, two, three):
        status, again, headers = await post_job(http, gw.url, alice, body, **key)
        assert (status, again["job_id"]) == (202, first["job_id"]), again
        assert headers["Idempotent-Replayed"] == "true"
    other_message = {**body, "messages": [{"role": "system", "content": "Be long."}, USER]}
    other_field = {**body, "config": {**body["config"], "presence_penalty": 0.5}}
    for changed in (other_message, other_field):
        status, problem, _ = await post_job(http, three.url, alice, changed, **key)
        assert status == 409, problem
        assert problem["type"].endswith("/idempotency-key-reused")
