"""Kafka intake of jobs: one group consumer per source, offsets committed once jobs are final."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata
from pydantic import ValidationError

from services.streamer.claims import decode, encode
from services.streamer.job import Running
from services.streamer.offsets import OffsetTracker
from services.streamer.rejects import Rejected
from shared.contracts import RunJob, parse_record
from shared.deadletter import MAX_JOB_ID_CHARS

log = logging.getLogger(__name__)

# Called with a job parsed from a record; the intake tracks its offset until `done`.
Offer = Callable[[Running, int], None]
# Called with a record that cannot be run; returns once it is dead-lettered and its
# failure published (retrying Kafka errors itself), so its offset may then be committed.
DeadLetter = Callable[[Rejected], Awaitable[None]]


# ConsumerRecord.timestamp_type of a record stamped by the broker on append.
LOG_APPEND_TIME = 1


class Unrunnable(Exception):
    """A job record the streamer cannot run; trying it again would not help."""

    retriable = False


class WrongType(Unrunnable):
    """A valid record of another type than RunJob on a job topic."""


def check_runnable(job: RunJob, now: datetime, max_delay_s: float) -> None:
    """Raise `Unrunnable` for what validation lets through but the streamer cannot run."""
    if not job.job_id or len(job.job_id) > MAX_JOB_ID_CHARS:
        raise Unrunnable(f"job id must be 1 to {MAX_JOB_ID_CHARS} characters")
    data = job.data
    if data.submitted_at.tzinfo is None:
        raise Unrunnable("submitted_at has no time zone")
    if data.accept_by is not None and data.accept_by.tzinfo is None:
        raise Unrunnable("accept_by has no time zone")
    not_before = data.not_before
    if not_before is not None:
        if not_before.tzinfo is None:
            raise Unrunnable("not_before has no time zone")
        # Its offset stays uncommitted while it waits: a far-off time would hold the partition.
        if (not_before - now).total_seconds() > max_delay_s:
            raise Unrunnable(f"not_before is more than {max_delay_s:g} s ahead")


def appended_too_late(job: RunJob, timestamp_ms: int, timestamp_type: int, skew_s: float) -> bool:
    """Whether a first attempt reached the broker after the gateway had given up on it.

    Judged only by the broker's append time (LogAppendTime, type 1), `skew_s` past the
    deadline: the gateway's clock may differ from the broker's, and a job the gateway
    acknowledged must never be dropped. CreateTime records and records without a deadline run.
    """
    accept_by = job.data.accept_by
    if accept_by is None or timestamp_type != LOG_APPEND_TIME or job.data.attempt != 1:
        return False
    return timestamp_ms / 1000 > accept_by.timestamp() + skew_s


class _Revocations(ConsumerRebalanceListener):  # type: ignore[misc]  # untyped base
    def __init__(self, intake: Intake) -> None:
        self.intake = intake

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.intake.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.intake.assigned(set(assigned))


class Intake:
    """Reads RunJob records of some topics in a consumer group and hands them on by band.

    Partitions of a band pause while `backlog(rank)` reaches `prefetch`, so memory stays
    bounded while a higher band's partitions keep being fetched.
    """

    def __init__(
        self,
        name: str,
        consumer: AIOKafkaConsumer,
        topics: list[str],
        rank_of_topic: Callable[[str, RunJob], int],
        offer: Offer,
        dead_letter: DeadLetter,
        backlog: Callable[[int], int],
        prefetch: int,
        on_revoke: Callable[[set[TopicPartition]], None],
        admin: AIOKafkaAdminClient,
        group_id: str,
        *,
        max_delay_s: float = 3600.0,
        accept_skew_s: float = 1.0,
        on_late: Callable[[], None] = lambda: None,
        on_kafka_error: Callable[[], None] = lambda: None,
        backoff_s: tuple[float, float] = (0.2, 10.0),
    ) -> None:
        self.max_delay_s = max_delay_s
        self.accept_skew_s = accept_skew_s
        self.on_late = on_late
        self.on_kafka_error = on_kafka_error
        self.backoff_s = backoff_s
        self.admin = admin
        self.group_id = group_id
        # Per partition: offset -> (job id, attempt) of attempts started and not final,
        # ours and those a previous owner left in the commit metadata.
        self._started: dict[TopicPartition, dict[int, tuple[str, int]]] = {}
        self._dirty: set[TopicPartition] = set()
        self.name = name
        self.consumer = consumer
        self.topics = topics
        self.rank_of = rank_of_topic
        self.offer = offer
        self.dead_letter = dead_letter
        self.backlog = backlog
        self.prefetch = prefetch
        self.on_revoke = on_revoke
        self.offsets: OffsetTracker[TopicPartition] = OffsetTracker()
        self._commit_wanted = asyncio.Event()
        self._band_of_topic: dict[str, int] = {}

    def subscribe(self, band_of_topic: dict[str, int]) -> None:
        self._band_of_topic = band_of_topic
        self.consumer.subscribe(self.topics, listener=_Revocations(self))

    def ready(self) -> bool:
        return bool(self.consumer.assignment())

    async def lag(self) -> dict[str, int]:
        """Records per topic not yet finished: from the oldest unfinished one to the high mark."""
        out: dict[str, int] = {}
        assigned = list(self.consumer.assignment())
        if not assigned:
            return out
        # Asked of the broker: a paused partition has no fresh high-water mark of its own.
        ends = await self.consumer.end_offsets(assigned)
        for tp, high in ends.items():
            position = self.offsets.position(tp)
            if position is None:
                position = await self.consumer.position(tp)
            out[tp.topic] = out.get(tp.topic, 0) + max(0, high - position)
        return out

    def done(self, tp: TopicPartition, offset: int) -> None:
        self.offsets.done(tp, offset)
        started = self._started.get(tp)
        if started is not None:
            started.pop(offset, None)
        self._commit_wanted.set()

    def started(self, tp: TopicPartition, offset: int, job_id: str, attempt: int) -> None:
        """Claim an attempt in the commit metadata, so a successor runs the next one."""
        self._started.setdefault(tp, {})[offset] = (job_id, attempt)
        self._dirty.add(tp)
        self._commit_wanted.set()

    def previous_attempt(self, tp: TopicPartition, offset: int, job_id: str) -> int:
        """The attempt a previous owner started for this record, or 0."""
        claim = self._started.get(tp, {}).get(offset)
        return claim[1] if claim is not None and claim[0] == job_id else 0

    async def assigned(self, assigned: set[TopicPartition]) -> None:
        if not assigned:
            return
        try:
            committed = await self.admin.list_consumer_group_offsets(
                self.group_id, partitions=sorted(assigned)
            )
        except KafkaError as exc:
            log.warning("%s: could not read commit metadata: %r", self.name, exc)
            return
        for tp, meta in committed.items():
            claims = decode(meta.metadata)
            if claims:
                self._started.setdefault(tp, {}).update(claims)

    async def revoked(self, revoked: set[TopicPartition]) -> None:
        await self._commit()
        for tp in revoked:
            self.offsets.forget(tp)
            self._started.pop(tp, None)
            self._dirty.discard(tp)
        self.on_revoke(revoked)

    def _pause_full_bands(self) -> None:
        assigned = self.consumer.assignment()
        paused = self.consumer.paused()
        for tp in assigned:
            band = self._band_of_topic.get(tp.topic)
            if band is None:
                continue
            full = self.backlog(band) >= self.prefetch
            if full and tp not in paused:
                self.consumer.pause(tp)
            elif not full and tp in paused:
                self.consumer.resume(tp)

    async def fetch_loop(self) -> None:
        consumer = self.consumer
        first_delay, max_delay = self.backoff_s
        delay = first_delay
        while True:
            try:
                self._pause_full_bands()
                batch = await consumer.getmany(timeout_ms=100, max_records=500)
            except KafkaError as exc:
                # The loop outlives a broker hiccup; what was not fetched is fetched later.
                self.on_kafka_error()
                log.warning("%s: fetch failed (%r); retry in %.1fs", self.name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)
                continue
            delay = first_delay
            for tp, records in batch.items():
                for record in records:
                    self.offsets.track(tp, record.offset)
                    await self._take(tp, record)

    async def _take(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        offset, key, value = record.offset, record.key, record.value

        def rejected(reason: str, error_type: str) -> Rejected:
            return Rejected(key, value, reason, error_type, tp.topic, tp.partition, offset)

        try:
            parsed = parse_record(value or b"")
            if not isinstance(parsed, RunJob):
                raise WrongType(f"unexpected record type {parsed.type!r}")  # noqa: TRY301
            check_runnable(parsed, datetime.now(UTC), self.max_delay_s)
        except ValidationError as exc:
            errors = exc.errors()
            reason = f"invalid record: {errors[0]['msg'] if errors else exc}"
            await self._reject(rejected(reason, "ValidationError"), tp, offset)
            return
        except Unrunnable as exc:
            await self._reject(rejected(str(exc), type(exc).__name__), tp, offset)
            return
        except Exception as exc:  # a record boundary: nothing read from Kafka may stop the loop
            log.exception(
                "%s: record %s[%d]@%d broke the intake", self.name, tp.topic, tp.partition, offset
            )
            await self._reject(rejected(repr(exc), type(exc).__name__), tp, offset)
            return
        if appended_too_late(parsed, record.timestamp, record.timestamp_type, self.accept_skew_s):
            # The gateway answered 503 and voids it: the cancel may not be read in time.
            self.on_late()
            log.warning(
                "%s: job %s reached the broker after its accept_by; not run",
                self.name,
                parsed.job_id,
                extra={"job_id": parsed.job_id, "trace_id": parsed.trace_id},
            )
            self.done(tp, offset)
            return
        previous = self.previous_attempt(tp, offset, parsed.job_id)
        if previous >= parsed.data.attempt:
            # A previous owner died mid-attempt: this run is the next attempt.
            parsed = parsed.model_copy(
                update={"data": parsed.data.model_copy(update={"attempt": previous + 1})}
            )
            log.info(
                "job %s was started elsewhere; running attempt %d", parsed.job_id, previous + 1
            )
        running = Running(job=parsed, source=self.name, tp=tp, offset=offset)
        not_before = parsed.data.not_before
        if not_before is not None:
            running.due = time.monotonic() + (not_before - datetime.now(UTC)).total_seconds()
        self.offer(running, self.rank_of(tp.topic, parsed))

    async def _reject(self, rejected: Rejected, tp: TopicPartition, offset: int) -> None:
        # Only once the DLQ and the events topic have it may the offset move past it.
        await self.dead_letter(rejected)
        self.done(tp, offset)

    async def commit_loop(self) -> None:
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted.clear()
            await self._commit()

    async def _commit(self) -> None:
        advanced = self.offsets.committable()
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp in set(advanced) | self._dirty:
            position = advanced.get(tp, self.offsets.position(tp))
            if position is not None:
                metadata = encode(self._started.get(tp, {}), position)
                offsets[tp] = OffsetAndMetadata(position, metadata)
        self._dirty.clear()
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:
            # A rebalance took the partition: the new owner re-runs what we could not commit.
            log.warning("%s: commit of %s failed: %r", self.name, offsets, exc)

    async def final_commit(self) -> None:
        with contextlib.suppress(KafkaError):
            await self._commit()
