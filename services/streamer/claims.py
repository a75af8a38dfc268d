"""Which attempt of which job has started and how it ended, learnt from the events topic.

When a streamer dies or gives a partition away mid-job, the next owner reads the
job.started events (and the events that end an attempt) written since the oldest
unfinished record of its partitions, so a rerun is always a new attempt number and a
job already settled is not run again. No I/O here: `claims_log.py` reads the topic.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.contracts import (
    AnyRecord,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobRetrying,
    JobStarted,
)


@dataclass(slots=True)
class Claim:
    started: int = 0  # the highest attempt started
    retried: int = 0  # the highest attempt that ended in a retry (re-queued as the next one)
    final: bool = False  # completed, failed for good or cancelled


class Claims:
    """The claims of one intake, keyed by job id; any number of jobs."""

    def __init__(self) -> None:
        self._by_job: dict[str, Claim] = {}

    def __len__(self) -> int:
        return len(self._by_job)

    def replace(self, other: Claims) -> None:
        """Take what a fresh read of the events topic says, with our own starts since kept."""
        for job_id, claim in self._by_job.items():
            mine = other._by_job.setdefault(job_id, Claim())
            mine.started = max(mine.started, claim.started)
            mine.retried = max(mine.retried, claim.retried)
            mine.final = mine.final or claim.final
        self._by_job = other._by_job

    def observe(self, record: AnyRecord) -> None:
        """Learn from one event of the events topic; other types tell nothing here."""
        if isinstance(record, JobStarted):
            self.started(record.job_id, record.data.attempt)
        elif isinstance(record, JobRetrying):
            claim = self._by_job.setdefault(record.job_id, Claim())
            if record.data.requeued:
                claim.retried = max(claim.retried, record.data.attempt)
            # Not re-queued (a fallback in the slot): the same job record carries the next
            # attempt, whose job.started makes a rerun of that record a new attempt again.
        elif isinstance(record, JobCompleted | JobFailed | JobCancelled):
            self._by_job.setdefault(record.job_id, Claim()).final = True

    def started(self, job_id: str, attempt: int) -> None:
        claim = self._by_job.setdefault(job_id, Claim())
        claim.started = max(claim.started, attempt)

    def forget(self, job_id: str) -> None:
        """The job's record is final here: nothing more to remember."""
        self._by_job.pop(job_id, None)

    def attempt_to_run(self, job_id: str, attempt: int) -> int | None:
        """The attempt a fetched record of `attempt` runs as, or None: it is settled already.

        Settled: the job ended for good, or this record's attempt was re-queued as a later
        one (the retry record carries the job on). Started but not ended: the next attempt.
        """
        claim = self._by_job.get(job_id)
        if claim is None:
            return attempt
        if claim.final or claim.retried >= attempt:
            return None
        if claim.started >= attempt:
            return claim.started + 1
        return attempt
