"""The results projection: lifecycle moves in any order, costs, speeds, parsing, cursors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from services.results.projection import JobRow, Rules, apply, result_of, tokens_per_second
from services.results.reads import BadCursor, decode_cursor, encode_cursor
from shared.contracts import JobCompleted
from shared.jobtypes import load_job_types
from shared.lifecycle import JobStatus
from shared.prices import load_prices
from tests.integration.results_kit import T0, job_script

JOB_TYPES = load_job_types()
RULES = Rules(JOB_TYPES, load_prices())


def test_events_in_order_complete_the_job() -> None:
    script = job_script(queued_ms=40, ttft_ms=100)
    job = JobRow(script.accepted.job_id)
    assert all(apply(job, e) for e in script.events)
    assert job.status is JobStatus.COMPLETED
    assert job.queue_wait_ms == 40
    assert job.first_token_at == T0 + timedelta(milliseconds=140)
    assert (job.user_id, job.attempt, job.model) == ("alice", 1, "gpt-4o-mini")


def test_late_accepted_keeps_the_final_status_and_fills_the_spec() -> None:
    script = job_script(queued_ms=40)
    job = JobRow(script.accepted.job_id)
    for event in script.events[1:]:
        assert apply(job, event)
    owner_before = job.user_id
    assert owner_before is None
    assert apply(job, script.events[0])
    assert job.status is JobStatus.COMPLETED
    assert (job.user_id, job.job_type, job.priority) == ("alice", "analysis", "normal")


def test_moves_after_a_final_state_are_ignored() -> None:
    script = job_script()
    job = JobRow(script.accepted.job_id)
    for event in script.events:
        apply(job, event)
    started = script.events[1]
    assert not apply(job, started)  # a replayed start after completion
    assert job.status is JobStatus.COMPLETED


def test_an_earlier_attempts_news_after_a_later_start_is_ignored() -> None:
    script = job_script(retries=1, outcome="running")
    accepted, started1, retrying1, started2 = script.events
    job = JobRow(accepted.job_id)
    for event in (accepted, started1, retrying1, started2):
        assert apply(job, event)
    assert not apply(job, started1)
    assert not apply(job, retrying1)
    assert (job.status, job.attempt) == (JobStatus.RUNNING, 2)


def test_failure_keeps_its_reason() -> None:
    script = job_script(outcome="failed", error_type="UpstreamRejected")
    job = JobRow(script.accepted.job_id)
    for event in script.events:
        apply(job, event)
    assert job.status is JobStatus.FAILED
    assert (job.error_reason, job.error_type) == ("server_error: 500", "UpstreamRejected")


def completed_result(model: str, **usage: int) -> Decimal | None:
    script = job_script()
    job = JobRow(script.accepted.job_id)
    for event in script.events:
        apply(job, event)
    completed = script.events[-1]
    assert isinstance(completed, JobCompleted)
    data = completed.data.model_copy(
        update={"model": model, "usage": completed.data.usage.model_copy(update=usage)}
    )
    return result_of(job, completed.model_copy(update={"data": data}), RULES).estimated_cost_usd


def test_a_completion_costs_its_models_price_from_the_workload_file() -> None:
    # gpt-4o-mini: 0.15 input, 0.60 output per million tokens in the packaged file.
    assert completed_result("gpt-4o-mini", prompt_tokens=10, completion_tokens=2) == Decimal(
        "0.00000270"
    )
    assert completed_result(
        "gpt-4o-2024-08-06", prompt_tokens=1_000_000, completion_tokens=0
    ) == Decimal("2.5")


def test_a_completion_of_a_model_without_a_price_costs_null() -> None:
    assert completed_result("model-nobody-priced", prompt_tokens=10, completion_tokens=2) is None


def test_tokens_per_second_counts_the_time_after_the_first_token() -> None:
    assert tokens_per_second(10, 1100, 100) == 10.0
    assert tokens_per_second(10, 2000, None) == 5.0
    assert tokens_per_second(0, 0, None) == 0.0


def test_result_of_a_security_review_counts_severities() -> None:
    response = (
        '{"findings": [{"severity": "medium", "title": "a", "detail": "b"},'
        ' {"severity": "medium", "title": "c", "detail": "d"}]}'
    )
    script = job_script(job_type="security_analysis", response=response)
    job = JobRow(script.accepted.job_id)
    for event in script.events:
        apply(job, event)
    completed = script.events[-1]
    assert isinstance(completed, JobCompleted)
    result = result_of(job, completed, RULES)
    assert result.severity_breakdown == {
        "critical": 0,
        "high": 0,
        "medium": 2,
        "low": 0,
        "info": 0,
    }
    assert result.parse_error is None
    assert result.breakdown == {"findings[].severity": result.severity_breakdown}


@pytest.mark.parametrize(
    ("job_type", "text", "value"),
    [
        ("analysis", "free text", None),
        ("sentiment_analysis", '{"label": "negative", "confidence": 0.2, "reason": "r"}', "ok"),
        ("sentiment_analysis", '{"label": "negative", "confidence": 1.5, "reason": "r"}', None),
        ("gas_analysis", '```json\n{"optimisations": []}\n```', "ok"),
        ("gas_analysis", "not json", None),
    ],
)
def test_parse_response_never_raises(job_type: str, text: str, value: str | None) -> None:
    parsed = JOB_TYPES.parse_response(job_type, text)
    assert (parsed.value is not None) == (value == "ok")
    structured = JOB_TYPES[job_type].structured
    assert (parsed.error is not None) == (structured and value is None)


def test_structured_types_ask_for_json_and_carry_a_response_format() -> None:
    for name in ("security_analysis", "gas_analysis", "sentiment_analysis"):
        job_type = JOB_TYPES[name]
        assert "JSON" in job_type.system_prompt
        fmt = job_type.response_format()
        assert fmt is not None
        assert fmt["json_schema"]["schema"]["type"] == "object"
    assert JOB_TYPES["analysis"].response_format() is None


def test_cursor_round_trips_and_rejects_garbage() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC)
    assert decode_cursor(encode_cursor(at, "job-1")) == (at, "job-1")
    for bad in ("", "!!!", encode_cursor(at, "x")[:-3], "WzEsMl0"):
        with pytest.raises(BadCursor):
            decode_cursor(bad)
