"""An OpenAI chat completion request as a job submission, validated as POST /api/v1/jobs."""

from __future__ import annotations

from typing import Any

import orjson

from services.gateway.openai_request import ChatRequest, read_request
from services.gateway.rejection import Rejection
from services.gateway.submit import parse_request
from shared.api import JobSubmission
from shared.jobtypes import load_job_types
from shared.topics import Priority

MESSAGES = [{"role": "user", "content": "hi"}]


def read(body: Any, headers: dict[str, str] | None = None) -> ChatRequest | Rejection:
    return read_request(body, headers or {}, default_job_type="analysis")


def submission(chat: ChatRequest | Rejection) -> JobSubmission:
    assert isinstance(chat, ChatRequest), chat
    parsed = parse_request(
        chat.body,
        chat.headers,
        max_prompt_chars=10_000,
        max_depth=32,
        job_types=load_job_types(None),
    )
    assert not isinstance(parsed, Rejection), parsed
    return parsed.job


def test_openai_fields_become_the_jobs_config_and_the_rest_stays_metadata() -> None:
    chat = read(
        {
            "model": "gpt-4o-mini",
            "messages": MESSAGES,
            "max_completion_tokens": 50,
            "temperature": 0.1,
            "top_p": None,  # a null is a field left out
            "stop": ["\n"],
            "stream": True,
            "stream_options": {"include_usage": True},
            "store": False,
            "metadata": {"streamjobs_priority": "high", "ticket": "T-1"},
        }
    )
    job = submission(chat)
    assert isinstance(chat, ChatRequest) and chat.stream and chat.include_usage
    assert job.config.model == "gpt-4o-mini" and job.config.max_completion_tokens == 50
    assert job.config.temperature == 0.1 and job.config.stop == ["\n"]
    assert job.config.top_p is None
    assert job.priority is Priority.HIGH
    assert job.metadata == {"ticket": "T-1"}, "the streamjobs_ keys are not stored"
    assert job.messages is not None and job.messages[0].content == "hi"


def test_headers_win_over_metadata_and_carry_the_idempotency_key() -> None:
    chat = read(
        {
            "model": "m",
            "messages": MESSAGES,
            "metadata": {
                "streamjobs_priority": "low",
                "streamjobs_idempotency_key": "from-meta",
                "streamjobs_job_type": "gas_analysis",
            },
        },
        {"X-Streamjobs-Priority": "Urgent", "Idempotency-Key": "from-header"},
    )
    job = submission(chat)
    assert isinstance(chat, ChatRequest)
    assert job.priority is Priority.URGENT and job.job_type == "gas_analysis"
    assert chat.headers["Idempotency-Key"] == "from-header"
    meta_only = read(
        {"model": "m", "messages": MESSAGES, "metadata": {"streamjobs_idempotency_key": "k-1"}}
    )
    assert isinstance(meta_only, ChatRequest) and meta_only.headers["Idempotency-Key"] == "k-1"


def test_what_a_job_cannot_honour_is_refused_with_the_parameter_named() -> None:
    unknown = read({"model": "m", "messages": MESSAGES, "logprobs": True})
    assert isinstance(unknown, Rejection) and unknown.status == 400
    assert unknown.errors[0]["loc"] == ["body", "logprobs"]
    no_model = read({"messages": MESSAGES})
    assert isinstance(no_model, Rejection) and no_model.errors[0]["loc"] == ["body", "model"]
    no_messages = read({"model": "m"})
    assert isinstance(no_messages, Rejection)
    assert no_messages.errors[0]["loc"] == ["body", "messages"]
    assert isinstance(read([1, 2]), Rejection)
    assert isinstance(read({"model": "m", "messages": MESSAGES, "stream": "yes"}), Rejection)
    bad_options = read({"model": "m", "messages": MESSAGES, "stream_options": {"x": 1}})
    assert isinstance(bad_options, Rejection)
    bad_meta = read({"model": "m", "messages": MESSAGES, "metadata": {"streamjobs_priority": 3}})
    assert isinstance(bad_meta, Rejection)


def test_the_body_is_a_submission_that_validates_like_any_other() -> None:
    chat = read({"model": "m", "messages": MESSAGES, "temperature": 9})
    assert isinstance(chat, ChatRequest)
    assert orjson.loads(chat.body)["config"] == {"model": "m", "temperature": 9}
    parsed = parse_request(
        chat.body, chat.headers, max_prompt_chars=10, max_depth=32, job_types=load_job_types(None)
    )
    assert isinstance(parsed, Rejection) and parsed.status == 422
    assert parsed.errors[0]["loc"][:3] == ["body", "config", "temperature"]
