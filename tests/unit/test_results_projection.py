"""The results projection: lifecycle moves in any order, costs, speeds, parsing, cursors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from services.results.projection import JobRow, apply, cost_usd, result_of, tokens_per_second
from services.results.reads import BadCursor, decode_cursor, encode_cursor
from services.results.settings import ModelPrice, ResultsSettings
from shared.contracts import JobCompleted
from shared.jobtypes import JOB_TYPES, parse_response
from shared.lifecycle import JobStatus
from tests.integration.results_kit import T0, job_script


def settings() -> ResultsSettings:
    return ResultsSettings(streamjobs_auth_secret="x" * 32)


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


def test_cost_uses_the_price_per_million_tokens() -> None:
    price = ModelPrice(prompt=0.15, completion=0.60)
    assert cost_usd(price, 1_000_000, 1_000_000) == Decimal("0.75")
    assert cost_usd(price, 10, 2) == Decimal("0.00000270")


def test_unknown_models_cost_the_default_and_snapshots_their_family() -> None:
    s = settings()
    assert s.price_of("gpt-4o-mini-2024-07-18") == s.results_prices["gpt-4o-mini"]
    assert s.price_of("gpt-4o-2024-08-06") == s.results_prices["gpt-4o"]
    assert s.price_of("llama-3") == s.results_default_price
    assert s.price_of(None) == s.results_default_price


def test_prices_are_read_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESULTS_PRICES", '{"m": {"prompt": 1, "completion": 2}}')
    assert ResultsSettings(streamjobs_auth_secret="x" * 32).price_of("m") == ModelPrice(
        prompt=1, completion=2
    )


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
    result = result_of(job, completed, settings().price_of("gpt-4o-mini"))
    assert result.severity_breakdown == {
        "critical": 0,
        "high": 0,
        "medium": 2,
        "low": 0,
        "info": 0,
    }
    assert result.parse_error is None


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
    parsed = parse_response(job_type, text)
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
