"""A job in a slot and what every attempt needs: dependencies, retry policy, outcomes."""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer, TopicPartition

from services.streamer.metrics import StreamerMetrics
from shared.contracts import CancelJobData, RunJob
from shared.jobtypes import JobTypes

if TYPE_CHECKING:
    from services.streamer.stream import AttemptStream
    from services.streamer.upstreams import Upstreams


class Outcome(enum.Enum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RETRYING = "retrying"
    DEFERRED = "deferred"  # breaker open: re-queued without an attempt
    PREEMPTED = "preempted"  # stopped for an urgent job: the next attempt waits for a slot


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 4
    base_s: float = 0.5
    max_s: float = 30.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with full jitter; a Retry-After is a floor."""
        backoff = random.uniform(0, min(self.max_s, self.base_s * 2 ** (attempt - 1)))
        return max(backoff, retry_after or 0.0)


@dataclass
class Deps:
    """Everything an attempt needs, built once by the app."""

    producer: AIOKafkaProducer
    upstreams: Upstreams
    metrics: StreamerMetrics
    retry: RetryPolicy
    prefix: str
    worker: str
    window_ms: float
    max_tokens: int
    job_timeout_s: float
    idle_timeout_s: float
    job_types: JobTypes
    clock: Callable[[], float] = time.time


@dataclass
class Running:
    """A job in a slot; the control consumer may cancel it."""

    job: RunJob
    source: str = ""
    tp: TopicPartition | None = None
    offset: int = -1
    due: float = 0.0  # monotonic time before which a retry must not start
    cancel: CancelJobData | None = None
    # The attempt's upstream reader; cancelling it closes the HTTP stream at once.
    reader: asyncio.Task[Any] | None = None
    # Whose cancels count: the owner of the first RunJob this instance saw for the job id,
    # not whatever a later record claims.
    owner: str = ""
    stream: AttemptStream | None = None  # the attempt's stream once it reached the upstream
    # When the dispatch loop gave the job its slot: its first attempt's JobStarted says so,
    # however long a busy loop takes to run the attempt's first step.
    slot_at: datetime | None = None
    launched: float = 0.0  # monotonic time of the slot, for preemption's youngest first
    queued_since: float = 0.0  # monotonic time it was first queued for a slot here
    preempted: bool = False  # its attempt is being stopped for an urgent job
    was_preempted: bool = False  # an earlier attempt was: never preempted twice

    def __post_init__(self) -> None:
        if not self.owner:
            self.owner = self.job.data.user_id

    def request_cancel(self, cancel: CancelJobData) -> None:
        if self.cancel is not None:
            return
        self.cancel = cancel
        if self.reader is not None:
            # The attempt sees its reader cancelled, flushes what it read and ends cancelled.
            self.reader.cancel()

    def request_preempt(self) -> None:
        """Stop the attempt for an urgent job: it ends retrying and the job waits again."""
        if self.cancel is not None or self.preempted:
            return
        self.preempted = True
        if self.reader is not None:
            self.reader.cancel()
