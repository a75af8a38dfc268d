"""A job's state machine, in one place: which event moves a job to which status."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})

EVENT_STATUS: dict[str, JobStatus] = {
    "job.accepted": JobStatus.QUEUED,
    "job.started": JobStatus.RUNNING,
    "job.retrying": JobStatus.RETRYING,
    "job.completed": JobStatus.COMPLETED,
    "job.failed": JobStatus.FAILED,
    "job.cancelled": JobStatus.CANCELLED,
}

_ALLOWED: dict[JobStatus | None, frozenset[JobStatus]] = {
    None: frozenset(JobStatus),
    JobStatus.QUEUED: frozenset(
        {
            JobStatus.RUNNING,
            JobStatus.RETRYING,
            JobStatus.CANCELLED,
            JobStatus.FAILED,
            JobStatus.COMPLETED,
        }
    ),
    JobStatus.RUNNING: frozenset({JobStatus.RUNNING, JobStatus.RETRYING, *FINAL_STATUSES}),
    JobStatus.RETRYING: frozenset({JobStatus.RUNNING, *FINAL_STATUSES}),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def status_after(event_type: str) -> JobStatus | None:
    """The status a job has after an event of `event_type`; None for a type that is no move.

    This is the one mapping from event types to statuses: services read it instead of their own.
    """
    return EVENT_STATUS.get(event_type)


class IllegalTransition(Exception):
    def __init__(self, current: JobStatus | None, target: JobStatus) -> None:
        super().__init__(f"illegal job transition {current} -> {target}")
        self.current = current
        self.target = target


def can_move(current: JobStatus | None, target: JobStatus) -> bool:
    return target in _ALLOWED[current]


def next_status(current: JobStatus | None, event_type: str) -> JobStatus:
    """The status after `event_type`; raises `IllegalTransition` for a move the machine forbids.

    RUNNING -> RUNNING is legal: a new attempt after a streamer died starts again.
    A late `job.accepted` (events may arrive after `job.started` on replay) is no move.
    """
    target = EVENT_STATUS[event_type]
    if current is not None and target is JobStatus.QUEUED:
        return current
    if not can_move(current, target):
        raise IllegalTransition(current, target)
    return target
