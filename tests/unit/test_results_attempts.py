"""What lifecycle events say of each attempt: upstream, model, status, usage (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from services.results.attempts import fact_of, merge
from shared.contracts import (
    JobCompleted,
    JobCompletedData,
    JobRetrying,
    JobRetryingData,
    JobStarted,
    JobStartedData,
    TokenUsage,
)
from shared.prices import Price

JOB = "job-1"


def test_an_attempt_is_one_fact_merged_from_its_start_and_its_end() -> None:
    events = [
        JobStarted(job_id=JOB, data=JobStartedData(attempt=1, worker="w", upstream="a", model="m")),
        JobRetrying(
            job_id=JOB,
            data=JobRetryingData(
                attempt=1,
                next_attempt=2,
                reason="server_error: 503",
                retry_at=datetime.now(UTC),
                upstream="a",
                model="m",
                usage=TokenUsage(prompt_tokens=10, completion_tokens=0, total_tokens=10),
                usage_estimated=True,
            ),
        ),
        JobStarted(job_id=JOB, data=JobStartedData(attempt=2, worker="w", upstream="b", model="m")),
        JobCompleted(
            job_id=JOB,
            data=JobCompletedData(
                attempt=2,
                response="r",
                model="m-2025",
                upstream="b",
                usage=TokenUsage(prompt_tokens=10, completion_tokens=5, total_tokens=15),
                chunks=1,
                last_seq=0,
                duration_ms=1.0,
            ),
        ),
    ]
    prices = {("m", "a"): Price(Decimal(1), Decimal(2))}  # USD per million; m-2025 unpriced
    facts = merge(f for f in (fact_of(e, lambda m, u: prices.get((m, u))) for e in events) if f)
    assert [(f.attempt, f.upstream, f.model, f.status, f.total_tokens) for f in facts] == [
        (1, "a", "m", "failed", 10),
        (2, "b", "m-2025", "completed", 15),
    ]
    first, second = facts
    assert first.usage_estimated and first.reason == "server_error: 503"
    assert first.cost_usd == Decimal("0.00001000") and second.cost_usd is None
    assert first.started_at is not None and first.ended_at is not None
    assert second.started_at == events[2].occurred_at


def test_an_attempt_stopped_for_an_urgent_job_is_preempted_not_failed() -> None:
    stopped = JobRetrying(
        job_id=JOB,
        data=JobRetryingData(
            attempt=1,
            next_attempt=2,
            reason="preempted: an urgent job needed the slot",
            retry_at=datetime.now(UTC),
            usage=TokenUsage(prompt_tokens=10, completion_tokens=4, total_tokens=14),
            requeued=False,
            preempted=True,
        ),
    )
    fact = fact_of(stopped, lambda m, u: None)
    assert fact is not None
    assert (fact.status, fact.total_tokens) == ("preempted", 14), "billed, and not a failure"
