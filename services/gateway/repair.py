"""Voids of late admissions: a job whose decision committed after its requester had answered
503 is cancelled, so a refused submission never turns into a job that runs. Bounded, and
drained at shutdown."""

from __future__ import annotations

import asyncio

from services.gateway.publisher import Publisher
from shared.contracts import CancelJob, CancelJobData
from shared.topics import control_topic

VOID_REASON = "not queued: accepted after the gateway had answered 503"


class Repairs:
    def __init__(
        self, publisher: Publisher, *, prefix: str, max_tasks: int, drain_timeout_s: float
    ) -> None:
        self.publisher = publisher
        self.prefix = prefix
        self.max_tasks = max_tasks
        self.drain_timeout_s = drain_timeout_s
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def count(self) -> int:
        return len(self._tasks)

    @property
    def full(self) -> bool:
        """Whether one more void could exceed the bound: new submissions are refused then."""
        return len(self._tasks) >= self.max_tasks

    def void(self, job_id: str, trace_id: str, owner: str) -> None:
        """Cancel the job, until the broker takes the cancel.

        The job's records are committed (its decision is), so a streamer meets the job and
        ends it cancelled: before it starts if the cancel is there first (streamers remember
        cancels of jobs they have not fetched), at once if it has started.
        """
        cancel = CancelJob(
            job_id=job_id,
            trace_id=trace_id,
            data=CancelJobData(user_id=owner, admin=True, reason=VOID_REASON),
        )
        task = asyncio.create_task(self.publisher.until_taken(control_topic(self.prefix), cancel))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the voids to end; cancel those still trying after that."""
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=self.drain_timeout_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
