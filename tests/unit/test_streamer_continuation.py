"""The request of an attempt that continues a cut-short answer, and of a fallback model."""

from __future__ import annotations

from services.streamer.continuation import (
    CONTINUE_INSTRUCTION,
    asked_of,
    continuation_request_for,
)
from services.streamer.upstream import request_for
from shared.contracts import ModelConfig, ResumeFrom, RunJobData, utcnow
from shared.jobtypes import load_job_types
from shared.topics import Priority

TYPES = load_job_types()


def job(model: str = "gpt-4o-mini", max_tokens: int = 300) -> RunJobData:
    return RunJobData(
        user_id="alice",
        prompt="Explain event sourcing.",
        job_type="analysis",
        priority=Priority.NORMAL,
        config=ModelConfig(model=model, max_tokens=max_tokens),
        submitted_at=utcnow(),
        attempt=2,
    )


def test_the_continuation_sends_the_partial_answer_as_an_assistant_prefix() -> None:
    partial = "Event sourcing stores every change as"
    request = continuation_request_for(
        job(), ResumeFrom(attempt=1, text=partial, next_seq=7, tokens=100), TYPES
    )
    original = request_for(job(), TYPES)["messages"]
    assert request["messages"][: len(original)] == original
    assert request["messages"][len(original) :] == [
        {"role": "assistant", "content": partial},
        {"role": "user", "content": CONTINUE_INSTRUCTION},
    ]
    assert request["max_tokens"] == 200, "what was streamed counts against the length"
    assert request["stream"] is True and request["model"] == "gpt-4o-mini"


def test_a_continuation_past_the_length_still_asks_for_one_token() -> None:
    request = continuation_request_for(
        job(max_tokens=50), ResumeFrom(attempt=1, text="x", next_seq=1, tokens=80), TYPES
    )
    assert request["max_tokens"] == 1


def test_a_fallback_hop_asks_its_own_model_with_the_same_request() -> None:
    asked = asked_of(job("gpt-4o-mini"), "gpt-4o")
    assert request_for(asked, TYPES)["model"] == "gpt-4o"
    assert request_for(asked, TYPES)["messages"] == request_for(job(), TYPES)["messages"]
    same = job()
    assert asked_of(same, "gpt-4o-mini") is same
