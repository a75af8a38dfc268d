"""What the streamer's use cases need from the outside: offsets, events, attempts, Kafka."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from aiokafka import TopicPartition

from services.streamer.job import Running
from services.streamer.streamed import Streamed
from services.streamer.upstream import InternalError
from shared.contracts import CancelJobData, RunJob


class OffsetLedger(Protocol):
    """Where a fetched job's offset is claimed and released (an `Intake` per source)."""

    def started(self, tp: TopicPartition, offset: int, job_id: str, attempt: int) -> None: ...

    def done(self, tp: TopicPartition, offset: int) -> None: ...


class EventPublisher(Protocol):
    """The final events of jobs that end outside a normal attempt."""

    async def cancelled(self, job: RunJob, cancel: CancelJobData) -> None:
        """The cancelled fact of a job that never started."""

    async def crashed(self, job: RunJob, exc: InternalError, streamed: Streamed | None) -> None:
        """The failure of an attempt that broke on our side (a retry while attempts remain)."""


# One attempt of a job against the upstream, to a final event (or a retry).
RunAttempt = Callable[[Running], Awaitable[object]]
# Returns once Kafka answers again; raises KafkaError while it does not.
KafkaProbe = Callable[[], Awaitable[object]]
