"""The job state machine accepts the moves of a job's life and rejects the rest."""

from __future__ import annotations

import pytest

from shared.lifecycle import IllegalTransition, JobStatus, can_move, next_status, status_after


def test_happy_path_reaches_completed() -> None:
    status = None
    for event in ("job.accepted", "job.started", "job.completed"):
        status = next_status(status, event)
    assert status is JobStatus.COMPLETED


def test_retry_then_new_attempt_runs_again() -> None:
    status = next_status(JobStatus.RUNNING, "job.retrying")
    assert next_status(status, "job.started") is JobStatus.RUNNING


def test_restart_after_a_dead_streamer_is_a_legal_running_to_running_move() -> None:
    assert next_status(JobStatus.RUNNING, "job.started") is JobStatus.RUNNING


def test_late_accepted_event_does_not_move_a_running_job_back() -> None:
    assert next_status(JobStatus.RUNNING, "job.accepted") is JobStatus.RUNNING


FINAL_MOVES = [
    (final, event)
    for final in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
    for event in ("job.started", "job.retrying", "job.completed", "job.failed")
]


@pytest.mark.parametrize(("final", "event"), FINAL_MOVES)
def test_final_states_are_final(final: JobStatus, event: str) -> None:
    with pytest.raises(IllegalTransition):
        next_status(final, event)


def test_each_lifecycle_event_type_leads_to_its_status_and_other_types_to_none() -> None:
    assert status_after("job.accepted") is JobStatus.QUEUED
    assert status_after("job.retrying") is JobStatus.RETRYING
    assert status_after("job.cancelled") is JobStatus.CANCELLED
    assert status_after("job.chunk") is None


def test_the_final_statuses_are_exactly_those_no_move_leaves() -> None:
    finals = {s for s in JobStatus if not any(can_move(s, t) for t in JobStatus)}
    assert finals == {s for s in JobStatus if s.is_final}
