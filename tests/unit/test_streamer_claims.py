"""Claims learnt from lifecycle events: which attempt a re-fetched job record runs as."""

from __future__ import annotations

from services.streamer.claims import Claims
from shared.contracts import (
    JobCompleted,
    JobCompletedData,
    JobRetrying,
    JobRetryingData,
    JobStarted,
    JobStartedData,
    utcnow,
)
from shared.contracts.events import TokenUsage

TRACE = "0" * 32


def started(job_id: str, attempt: int) -> JobStarted:
    return JobStarted(
        job_id=job_id,
        trace_id=TRACE,
        data=JobStartedData(attempt=attempt, worker="w", queued_for_ms=0),
    )


def test_a_job_never_started_runs_as_its_record_says() -> None:
    assert Claims().attempt_to_run("j", 1) == 1


def test_a_started_job_without_an_end_runs_as_the_attempt_after_the_highest() -> None:
    claims = Claims()
    for attempt in (1, 3, 2):
        claims.observe(started("j", attempt))
    assert claims.attempt_to_run("j", 1) == 4


def retrying(job_id: str, attempt: int, *, requeued: bool) -> JobRetrying:
    return JobRetrying(
        job_id=job_id,
        trace_id=TRACE,
        data=JobRetryingData(
            attempt=attempt,
            next_attempt=attempt + 1,
            reason="server_error: 503",
            retry_at=utcnow(),
            requeued=requeued,
        ),
    )


def test_a_job_that_fell_back_in_its_slot_and_died_there_runs_again_as_a_new_attempt() -> None:
    # Attempt 1 failed on one upstream, attempt 2 started on the next in the same slot,
    # then the streamer died: the job record (still attempt 1) must run, as attempt 3.
    claims = Claims()
    claims.observe(started("j", 1))
    claims.observe(retrying("j", 1, requeued=False))
    claims.observe(started("j", 2))
    assert claims.attempt_to_run("j", 1) == 3


def test_a_job_re_queued_on_the_retry_topic_is_not_run_from_its_old_record() -> None:
    claims = Claims()
    claims.observe(started("j", 1))
    claims.observe(retrying("j", 1, requeued=True))
    assert claims.attempt_to_run("j", 1) is None
    assert claims.attempt_to_run("j", 2) == 2  # the retry record carries it on


def test_any_number_of_claims_is_kept() -> None:
    claims = Claims()
    for i in range(20_000):
        claims.observe(started(f"job-{i:05d}-{'x' * 30}", 1))
    assert len(claims) == 20_000
    assert all(claims.attempt_to_run(f"job-{i:05d}-{'x' * 30}", 1) == 2 for i in range(20_000))


def test_a_completed_job_is_not_run_again() -> None:
    claims = Claims()
    claims.observe(started("j", 1))
    claims.observe(
        JobCompleted(
            job_id="j",
            trace_id=TRACE,
            data=JobCompletedData(
                attempt=1,
                response="r",
                finish_reason="stop",
                model="m",
                usage=TokenUsage(prompt_tokens=1, completion_tokens=1, total_tokens=2),
                chunks=1,
                last_seq=0,
                duration_ms=1,
            ),
        )
    )
    assert claims.attempt_to_run("j", 1) is None


def test_a_record_whose_attempt_went_on_as_a_retry_is_settled_but_the_retry_runs() -> None:
    claims = Claims()
    claims.observe(started("j", 1))
    claims.observe(
        JobRetrying(
            job_id="j",
            trace_id=TRACE,
            data=JobRetryingData(
                attempt=1, next_attempt=2, reason="server_error: 500", retry_at="2026-01-01T00:00Z"
            ),
        )
    )
    assert claims.attempt_to_run("j", 1) is None
    assert claims.attempt_to_run("j", 2) == 2


def test_a_fresh_read_keeps_our_own_later_starts() -> None:
    mine = Claims()
    mine.started("j", 3)
    read = Claims()
    read.observe(started("j", 2))
    read.observe(started("k", 1))
    mine.replace(read)
    assert mine.attempt_to_run("j", 1) == 4
    assert mine.attempt_to_run("k", 1) == 2


def test_a_forgotten_job_runs_as_its_record_says() -> None:
    claims = Claims()
    claims.started("j", 2)
    claims.forget("j")
    assert claims.attempt_to_run("j", 1) == 1
