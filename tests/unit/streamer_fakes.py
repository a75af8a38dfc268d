"""Fakes of the streamer's ports, and its dispatch use cases wired over them (no Kafka)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError
from prometheus_client import CollectorRegistry

from services.streamer.cancel_matching import CancelMatching
from services.streamer.cancels import Owners, PendingCancels
from services.streamer.capacity import Capacity
from services.streamer.delayed import DelayedRetries
from services.streamer.dispatch import Dispatcher
from services.streamer.fence import PriorityFence
from services.streamer.inflight import InFlight
from services.streamer.job import Outcome, Running
from services.streamer.metrics import StreamerMetrics
from services.streamer.preemption import Preemption
from services.streamer.reruns import Reruns
from services.streamer.scheduler import Scheduler
from services.streamer.streamed import Streamed
from services.streamer.upstream import InternalError
from shared.contracts import CancelJobData, ModelConfig, RunJob, RunJobData, utcnow
from shared.topics import Priority

TP = TopicPartition("jobs", 0)


def make_running(
    job_id: str,
    *,
    user: str = "alice",
    priority: Priority = Priority.NORMAL,
    offset: int = 0,
    attempt: int = 1,
) -> Running:
    job = RunJob(
        job_id=job_id,
        data=RunJobData(
            attempt=attempt,
            user_id=user,
            prompt="hello",
            job_type="analysis",
            priority=priority,
            config=ModelConfig(),
            submitted_at=utcnow(),
        ),
    )
    return Running(job=job, source="jobs", tp=TP, offset=offset)


def cancel_by(user: str, *, admin: bool = False) -> CancelJobData:
    return CancelJobData(user_id=user, admin=admin)


@dataclass
class FakeLedger:
    """Offsets claimed by started attempts and released by final ones."""

    claims: list[tuple[int, str, int]] = field(default_factory=list)
    released: list[int] = field(default_factory=list)

    def started(self, tp: TopicPartition, offset: int, job_id: str, attempt: int) -> None:
        self.claims.append((offset, job_id, attempt))

    def done(self, tp: TopicPartition, offset: int) -> None:
        self.released.append(offset)


@dataclass
class FakeEvents:
    """The events publisher; fails the first `kafka_failures` cancels as Kafka would."""

    cancelled_jobs: list[tuple[str, CancelJobData]] = field(default_factory=list)
    crashes: list[tuple[str, str]] = field(default_factory=list)
    kafka_failures: int = 0

    async def cancelled(self, job: RunJob, cancel: CancelJobData) -> None:
        if self.kafka_failures:
            self.kafka_failures -= 1
            raise KafkaConnectionError("broker away")
        self.cancelled_jobs.append((job.job_id, cancel))

    async def crashed(self, job: RunJob, exc: InternalError, streamed: Streamed | None) -> None:
        self.crashes.append((job.job_id, str(exc)))


class FakeUpstream:
    """Attempts that run until the test ends them, or raise what the test scripted."""

    def __init__(self) -> None:
        self.attempts: list[tuple[str, int]] = []
        self.started = asyncio.Event()
        self._gates: dict[str, asyncio.Event] = {}
        self._raises: dict[str, BaseException] = {}

    async def __call__(self, running: Running) -> Outcome | None:
        job_id = running.job.job_id
        self.attempts.append((job_id, running.job.data.attempt))
        self.started.set()
        gate = self._gates.setdefault(job_id, asyncio.Event())
        # The attempt's reader, as the stream's: a preemption cancels it.
        reader = running.reader = asyncio.create_task(gate.wait())
        try:
            await reader
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not running.preempted or (task is not None and task.cancelling()):
                raise
            # As the runner does: the stopped attempt's job becomes its next attempt.
            data = running.job.data.model_copy(update={"attempt": running.job.data.attempt + 1})
            running.job = running.job.model_copy(update={"data": data})
            return Outcome.PREEMPTED
        finally:
            running.reader = None
        gate.clear()
        if (exc := self._raises.pop(job_id, None)) is not None:
            raise exc
        return None

    def finish(self, job_id: str, *, raising: BaseException | None = None) -> None:
        if raising is not None:
            self._raises[job_id] = raising
        self._gates.setdefault(job_id, asyncio.Event()).set()

    def started_ids(self) -> list[str]:
        return [job_id for job_id, _ in self.attempts]


class FakeKafka:
    """Whether Kafka answers: fails the first `failures` probes."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.probes = 0

    async def list_topics(self) -> object:
        self.probes += 1
        if self.probes <= self.failures:
            raise KafkaConnectionError("broker away")
        return []


@dataclass
class FakeBands:
    """The job intake as the fence sees it: assigned partitions by band, how far each was
    handed on, and Kafka's end offsets (failing the first `failures` reads)."""

    bands: dict[TopicPartition, int] = field(default_factory=dict)
    seen: dict[TopicPartition, int] = field(default_factory=dict)
    ends: dict[TopicPartition, int] = field(default_factory=dict)
    reads: int = 0
    failures: int = 0

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.reads += 1
        if self.failures:
            self.failures -= 1
            raise KafkaConnectionError("broker away")
        return {tp: self.ends.get(tp, 0) for tp in partitions}


@dataclass
class Streamer:
    """The dispatch use cases wired over fakes, as the composition root wires them."""

    dispatcher: Dispatcher
    cancels: CancelMatching
    inflight: InFlight
    upstream: FakeUpstream
    events: FakeEvents
    ledger: FakeLedger
    kafka: FakeKafka
    registry: CollectorRegistry
    bands: FakeBands
    fence: PriorityFence

    def metric(self, name: str) -> float:
        return self.registry.get_sample_value(name) or 0.0


@asynccontextmanager
async def streamer(
    *,
    slots: int = 1,
    kafka_failures: int = 0,
    cancel_failures: int = 0,
    bands: FakeBands | None = None,
    max_lag_s: float = 0.0,
    window_s: float = 1.0,
    preemption: Preemption | None = None,
) -> AsyncIterator[Streamer]:
    """The dispatch use cases; no partition known to the fence, admission by capacity off,
    unless `bands` and `max_lag_s` say otherwise."""
    registry = CollectorRegistry()
    metrics = StreamerMetrics(registry)
    scheduler: Scheduler[Running] = Scheduler(slots, aging_s=30.0)
    delayed = DelayedRetries()
    inflight = InFlight()
    events = FakeEvents(kafka_failures=cancel_failures)
    ledger = FakeLedger()
    ledgers = {"jobs": ledger}
    upstream = FakeUpstream()
    kafka = FakeKafka(kafka_failures)
    bands = bands if bands is not None else FakeBands()
    fence = PriorityFence(
        bands=lambda: bands.bands,
        seen=bands.seen.get,
        end_offsets=bands.end_offsets,
        waiting=scheduler.waiting,
        on_check=metrics.fence_checks.inc,
        retry_s=0.01,
    )
    cancels = CancelMatching(
        pending=PendingCancels(),
        owners=Owners(),
        inflight=inflight,
        scheduler=scheduler,
        delayed=delayed,
        events=events,
        ledgers=ledgers,
        metrics=metrics,
        retry_delays_s=(0.01, 0.02),
    )
    dispatcher = Dispatcher(
        scheduler=scheduler,
        delayed=delayed,
        inflight=inflight,
        cancels=cancels,
        reruns=Reruns(kafka.list_topics, delays_s=(0.01, 0.02)),
        run_attempt=upstream,
        events=events,
        ledgers=ledgers,
        metrics=metrics,
        capacity=Capacity(max_lag_s, max_lag_s / 2, window_s),
        fence=fence,
        preemption=preemption,
    )
    loop = asyncio.create_task(dispatcher.loop())
    try:
        yield Streamer(
            dispatcher, cancels, inflight, upstream, events, ledger, kafka, registry, bands, fence
        )
    finally:
        await fence.close()
        loop.cancel()
        await inflight.finish(0.0)
        await asyncio.gather(loop, return_exceptions=True)
