"""A continuing attempt (on_interrupt=continue) carries on the stream: no restart at the client."""

from __future__ import annotations

from datetime import UTC, datetime

from services.notifier import resume
from services.notifier.state import JobState
from shared.contracts import (
    JobCompleted,
    JobCompletedData,
    JobRetrying,
    JobRetryingData,
    JobStarted,
    JobStartedData,
    TokenUsage,
)
from tests.unit.test_notifier_state import JOB, chunk


def started(attempt: int, continues: int | None = None) -> JobStarted:
    return JobStarted(
        job_id=JOB, data=JobStartedData(attempt=attempt, worker="w", continues=continues)
    )


def retrying(attempt: int) -> JobRetrying:
    return JobRetrying(
        job_id=JOB,
        data=JobRetryingData(
            attempt=attempt,
            next_attempt=attempt + 1,
            reason="stream_cut",
            retry_at=datetime.now(UTC),
        ),
    )


def completed_continuing(attempt: int, continues: int, last_seq: int) -> JobCompleted:
    return JobCompleted(
        job_id=JOB,
        data=JobCompletedData(
            attempt=attempt,
            continues=continues,
            response="whole",
            model="m",
            usage=TokenUsage(),
            chunks=last_seq + 1,
            last_seq=last_seq,
            duration_ms=1.0,
        ),
    )


def test_a_continuing_attempt_keeps_the_stream_and_its_seqs_go_on() -> None:
    state = JobState(JOB)
    state.apply_event(started(1), 0.0)
    for seq in range(3):
        state.apply_chunk(chunk(seq))
    state.apply_event(retrying(1), 0.0)
    state.apply_event(started(2, continues=1), 0.0)
    assert state.attempt == 1 and state.next_seq == 3, "the stream was not restarted"
    for seq in (3, 4):
        frame, _ = state.apply_chunk(chunk(seq))  # the continuation's chunks: attempt 1
        assert frame is not None
    final = state.apply_event(completed_continuing(2, continues=1, last_seq=4), 0.0)
    assert final is not None and state.finished
    assert [f.sse_id for f in state.chunks] == [f"1:{s}" for s in range(5)]
    # A client that saw up to seq 2 of attempt 1 gets 3 and 4, not a restart.
    owed = resume.replay(state, 2, 1)
    assert not owed.restarted
    assert [f.sse_id for f in owed.frames[:-1]] == ["1:3", "1:4"]


def test_the_final_event_of_a_continuation_waits_for_the_chunks_it_names() -> None:
    state = JobState(JOB)
    state.apply_event(started(1), 0.0)
    state.apply_chunk(chunk(0))
    state.apply_event(started(2, continues=1), 0.0)
    assert state.apply_event(completed_continuing(2, continues=1, last_seq=2), 0.0) is None
    state.apply_chunk(chunk(1))
    _, released = state.apply_chunk(chunk(2))
    assert released is not None and state.finished
