"""What the persister retries and what it isolates; ownership and partial results, no I/O."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import asyncpg
import pytest

from services.results.faults import classify
from services.results.projection import JobRow, Streamed, apply, owner_conflict, partial_result_of
from shared.contracts import (
    JobAccepted,
    JobCancelled,
    JobCancelledData,
    JobFailed,
    JobFailedData,
    TokenUsage,
)
from shared.prices import Price
from tests.integration.results_kit import T0, job_script

PRICE = Price(input=Decimal(1), output=Decimal(2))


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(),
        TimeoutError(),
        asyncpg.exceptions.ConnectionDoesNotExistError("gone"),
        asyncpg.exceptions.AdminShutdownError("shutdown"),
        asyncpg.exceptions.DeadlockDetectedError("deadlock"),
        asyncpg.exceptions.TooManyConnectionsError("busy"),
        asyncpg.exceptions.DiskFullError("no space left"),
        asyncpg.exceptions.UndefinedColumnError('column "usage_estimated" does not exist'),
        asyncpg.exceptions.InsufficientPrivilegeError("permission denied for table jobs"),
        asyncpg.exceptions.ReadOnlySQLTransactionError("read-only transaction"),
    ],
)
def test_lost_busy_or_wrong_databases_are_retried_not_blamed_on_records(exc: Exception) -> None:
    assert classify(exc).retriable


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.InvalidTextRepresentationError("invalid input syntax for type json"),
        asyncpg.exceptions.CharacterNotInRepertoireError("invalid byte sequence"),
        asyncpg.exceptions.UntranslatableCharacterError("\\u0000 cannot be converted to text"),
        asyncpg.exceptions.NumericValueOutOfRangeError("out of range"),
        asyncpg.exceptions.UniqueViolationError("duplicate"),
        asyncpg.exceptions.DataError("invalid input for query argument $2"),  # client side
        RecursionError("maximum recursion depth exceeded"),
        ValueError("Exceeds the limit (4300 digits) for integer string conversion"),
        KeyError("anything else our own code raises while building rows"),
    ],
)
def test_what_a_record_holds_is_isolated_not_retried(exc: Exception) -> None:
    fault = classify(exc)
    assert not fault.retriable
    assert fault.reason.startswith(type(exc).__name__)
    assert fault.error_type == type(exc).__name__


def test_a_long_reason_is_cut_for_the_dlq() -> None:
    assert len(classify(ValueError("x" * 10_000)).reason) <= 1000


def test_a_second_accepted_fact_cannot_change_the_owner() -> None:
    script = job_script("j", user="alice")
    job = JobRow("j")
    assert apply(job, script.accepted)
    other = job_script("j", user="mallory").accepted
    assert owner_conflict(job, other)
    assert not apply(job, other)
    assert job.user_id == "alice"
    assert job.prompt == script.accepted.data.prompt
    same_owner_replay = JobAccepted(job_id="j", data=script.accepted.data)
    assert not owner_conflict(job, same_owner_replay)
    assert apply(job, same_owner_replay)


def _ended_job() -> JobRow:
    job = JobRow("j")
    for event in job_script("j", outcome="running").events:
        apply(job, event)
    return job


def test_a_cancelled_attempt_keeps_the_streamed_text_and_the_reported_usage() -> None:
    usage = TokenUsage(prompt_tokens=10, completion_tokens=300, total_tokens=310)
    event = JobCancelled(
        job_id="j",
        occurred_at=T0 + timedelta(seconds=5),
        data=JobCancelledData(attempt=1, last_seq=1, model="gpt-4o", usage=usage),
    )
    row = partial_result_of(_ended_job(), event, Streamed("Hello world", 2, 2), PRICE)
    assert (row.response, row.chunks, row.model) == ("Hello world", 2, "gpt-4o")
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (10, 300, 310)
    assert row.estimated_cost_usd == Decimal("0.00061000")  # 10 x 1 + 300 x 2 per 1M
    assert not row.usage_estimated


def test_a_failed_attempt_without_usage_counts_the_streamed_tokens_as_estimated() -> None:
    event = JobFailed(
        job_id="j",
        data=JobFailedData(attempt=1, reason="server_error: 500", error_type="Upstream"),
    )
    row = partial_result_of(_ended_job(), event, Streamed("Hel", 7, 3), PRICE)
    assert (row.response, row.completion_tokens, row.total_tokens) == ("Hel", 7, 7)
    assert row.model == "gpt-4o-mini"  # the job's configured model
    assert row.estimated_cost_usd == Decimal("0.00001400")
    assert row.usage_estimated
