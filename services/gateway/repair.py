"""The Kafka-outage repair: a job whose command was not acknowledged is voided, an accepted
fact that was not acknowledged is published again. Bounded, and drained at shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from services.gateway.publisher import Publisher
from shared.contracts import CancelJob, CancelJobData, Envelope, JobFailed, JobFailedData
from shared.topics import control_topic, events_topic

VOID_REASON = "not queued: the job command was not acknowledged"


class Repairs:
    def __init__(
        self, publisher: Publisher, *, prefix: str, max_tasks: int, drain_timeout_s: float
    ) -> None:
        self.publisher = publisher
        self.prefix = prefix
        self.max_tasks = max_tasks
        self.drain_timeout_s = drain_timeout_s
        self._tasks: set[asyncio.Task[None]] = set()
        # Submissions publishing now: each may turn into one repair if it fails.
        self.publishing = 0

    @property
    def count(self) -> int:
        return len(self._tasks)

    @property
    def full(self) -> bool:
        """Whether one more failed submission could exceed the bound of repairs."""
        return len(self._tasks) + self.publishing >= self.max_tasks

    def void(self, job_id: str, trace_id: str, owner: str) -> None:
        """Cancel the job and close it as failed, until the broker takes both.

        The records may still reach the broker later (an unacknowledged send is not a lost
        one): voided, a refused submission never turns into a job that runs.
        """
        cancel = CancelJob(
            job_id=job_id,
            trace_id=trace_id,
            data=CancelJobData(user_id=owner, admin=True, reason=VOID_REASON),
        )
        closed = JobFailed(
            job_id=job_id,
            trace_id=trace_id,
            data=JobFailedData(
                attempt=0, reason=VOID_REASON, error_type="PublishFailed", retriable=True
            ),
        )
        self._spawn(self._publish_in_order(cancel, closed))

    def republish(self, accepted: Envelope) -> None:
        """A queued job's accepted fact, until the broker has it: the read side must learn."""
        self._spawn(self.publisher.until_taken(events_topic(self.prefix), accepted))

    async def _publish_in_order(self, cancel: CancelJob, closed: JobFailed) -> None:
        await self.publisher.until_taken(control_topic(self.prefix), cancel)
        await self.publisher.until_taken(events_topic(self.prefix), closed)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the repairs to end; cancel those still trying after that."""
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=self.drain_timeout_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
