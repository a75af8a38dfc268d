"""The intake's accept_by rule: a first attempt the broker appended after the gateway had
given up on it (plus a skew margin) is not run; everything else runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.streamer.intake import (
    LOG_APPEND_TIME,
    Unrunnable,
    appended_too_late,
    check_runnable,
)
from shared.contracts import ModelConfig, RunJob, RunJobData
from shared.topics import Priority

CREATE_TIME = 0
DEADLINE = datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC)
SKEW_S = 1.0


def job(accept_by: datetime | None = DEADLINE, attempt: int = 1) -> RunJob:
    return RunJob(
        job_id="job-1",
        data=RunJobData(
            user_id="alice",
            prompt="hello",
            job_type="analysis",
            priority=Priority.NORMAL,
            config=ModelConfig(),
            submitted_at=DEADLINE - timedelta(seconds=10),
            attempt=attempt,
            accept_by=accept_by,
        ),
    )


def at(offset_s: float) -> int:
    """The broker's append time, `offset_s` from the deadline, in milliseconds."""
    return int((DEADLINE.timestamp() + offset_s) * 1000)


def test_a_record_appended_before_its_deadline_runs() -> None:
    assert not appended_too_late(job(), at(-5), LOG_APPEND_TIME, SKEW_S)
    assert not appended_too_late(job(), at(0), LOG_APPEND_TIME, SKEW_S)


def test_a_record_appended_within_the_skew_margin_runs() -> None:
    assert not appended_too_late(job(), at(0.5), LOG_APPEND_TIME, SKEW_S)
    assert not appended_too_late(job(), at(SKEW_S), LOG_APPEND_TIME, SKEW_S)


def test_a_record_appended_past_its_deadline_and_the_margin_is_dropped() -> None:
    assert appended_too_late(job(), at(SKEW_S + 0.01), LOG_APPEND_TIME, SKEW_S)
    assert appended_too_late(job(), at(3600), LOG_APPEND_TIME, SKEW_S)
    assert appended_too_late(job(), at(0.01), LOG_APPEND_TIME, 0.0)


def test_a_create_time_record_runs_whatever_its_timestamp() -> None:
    # The producer's clock, not the broker's: a topic created before LogAppendTime.
    assert not appended_too_late(job(), at(3600), CREATE_TIME, SKEW_S)


def test_a_record_without_accept_by_runs() -> None:
    assert not appended_too_late(job(accept_by=None), at(3600), LOG_APPEND_TIME, SKEW_S)


def test_a_retry_attempt_runs_whatever_its_first_deadline() -> None:
    assert not appended_too_late(job(attempt=2), at(3600), LOG_APPEND_TIME, SKEW_S)


def test_an_accept_by_without_a_time_zone_cannot_run() -> None:
    naive = job(accept_by=DEADLINE.replace(tzinfo=None))
    with pytest.raises(Unrunnable, match="accept_by has no time zone"):
        check_runnable(naive, DEADLINE, 3600.0)
    check_runnable(job(), DEADLINE, 3600.0)
