"""The persister: reads events and chunks, writes them in batches, then commits their offsets.

Offsets are committed only after every record of the batch was either stored or
dead-lettered, so a crash or an outage loses nothing; the writes are idempotent,
so what comes again is harmless. The next batch is read and decoded while the
current one is written (the database works on one core, we on the other), and
batches are written and committed strictly in the order they were read. While
PostgreSQL is away the batch is retried with capped backoff and no record past
the one batch read ahead is read. A write the database refuses
for what a record holds is split in halves until the record that causes it is
alone: that one goes to the DLQ topic with its reason, the others are stored, so
no record can stall a partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    MessageSizeTooLargeError,
)
from pydantic import ValidationError

from services.results.decode import ChunkRow, StoredEvent, UnexpectedType, read_record
from services.results.faults import CONNECTION_ERRORS, WriteFault, classify
from services.results.metrics import ResultsMetrics
from services.results.projection import Rules
from services.results.settings import ResultsSettings
from services.results.store import BatchOutcome, write_batch
from services.results.unpriced import UnpricedModels
from shared.contracts import JobCancelled, JobCompleted, JobDeadLettered, JobFailed
from shared.deadletter import poison_record
from shared.kafka import publish
from shared.retry import retry_until_done
from shared.text import clean_text
from shared.topics import chunks_topic, dlq_topic

log = logging.getLogger(__name__)

__all__ = ["CONNECTION_ERRORS", "Batch", "CommitObserver", "Item", "Persister"]

# (Kafka timestamps of the batch's records in ms, wall time of the commit in s)
CommitObserver = Callable[[list[int], float], None]


@dataclass(slots=True)
class Item:
    """One readable record of a batch, with where it came from (for the DLQ)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    record: StoredEvent | ChunkRow


@dataclass
class Batch:
    items: list[Item]  # in the order they were read
    offsets: dict[TopicPartition, int]  # next offset to read, per partition
    timestamps: list[int]
    poison: list[JobDeadLettered] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.items)


def _split(items: Sequence[Item]) -> tuple[list[StoredEvent], list[ChunkRow]]:
    events: list[StoredEvent] = []
    chunks: list[ChunkRow] = []
    for item in items:
        if isinstance(item.record, ChunkRow):
            chunks.append(item.record)
        else:
            events.append(item.record)
    return events, chunks


class Persister:
    def __init__(
        self,
        settings: ResultsSettings,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        pool: asyncpg.Pool,
        metrics: ResultsMetrics,
        *,
        rules: Rules,
        observer: CommitObserver | None = None,
    ) -> None:
        self.settings = settings
        self.rules = rules
        self.unpriced = UnpricedModels(metrics.unpriced)
        self.consumer = consumer
        self.producer = producer
        self.pool = pool
        self.metrics = metrics
        self.observer = observer
        self.db_ok = True
        self.batches_written = 0
        self._positions: dict[TopicPartition, int] = {}
        self._chunks_topic = chunks_topic(settings.topic_prefix)

    async def run(self) -> None:
        writing: asyncio.Task[None] | None = None
        try:
            while True:
                batch = await self._collect()
                if writing is not None:
                    # One write at a time, in read order: offsets never commit past a gap.
                    await writing
                    writing = None
                if batch.offsets:
                    writing = asyncio.create_task(self._flush(batch))
        finally:
            if writing is not None:
                # Cut short: neither committed to Kafka nor to PostgreSQL, so it comes again.
                writing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writing

    async def rewind(self) -> None:
        """Seek every assigned partition back to its committed offset.

        After an error escaped a batch, its records were neither stored nor dead-lettered;
        reading on from the consumer's position would commit past them.
        """
        for tp in self.consumer.assignment():
            committed = await self.consumer.committed(tp)
            if committed is None:
                await self.consumer.seek_to_beginning(tp)  # as auto_offset_reset=earliest
            else:
                self.consumer.seek(tp, committed)
            self._positions.pop(tp, None)

    async def _collect(self) -> Batch:
        """Read until the batch is full or its first record waited the longest allowed."""
        s = self.settings
        batch = Batch([], {}, [])
        received = 0
        deadline: float | None = None
        while received < s.results_batch_size:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            wait_ms = 1000 if deadline is None else int((deadline - now) * 1000) + 1
            fetched = await self.consumer.getmany(
                timeout_ms=wait_ms, max_records=s.results_batch_size - received
            )
            for tp, records in fetched.items():
                for record in records:
                    self._read(record, batch)
                received += len(records)
                if records:
                    batch.offsets[tp] = records[-1].offset + 1
            if received and deadline is None:
                deadline = time.monotonic() + s.results_batch_delay_ms / 1000
            if not received:
                break  # idle: let the caller loop (and notice cancellation)
        return batch

    def _read(self, record: ConsumerRecord[bytes, bytes], batch: Batch) -> None:
        batch.timestamps.append(record.timestamp)
        if record.value is None:
            self._poison(record, batch, "empty record value", "EmptyRecord")
            return
        try:
            parsed = read_record(record.value, chunk_expected=record.topic == self._chunks_topic)
        except UnexpectedType as exc:
            self._poison(record, batch, str(exc), "WrongType")
            return
        except ValidationError as exc:
            self._poison(record, batch, _first_line(exc), "ValidationError")
            return
        except Exception as exc:  # noqa: BLE001  # the record's fault: dead-lettered, not a stall
            self._poison(record, batch, _first_line(exc), type(exc).__name__)
            return
        batch.items.append(
            Item(record.topic, record.partition, record.offset, record.value, parsed)
        )

    def _poison(
        self, record: ConsumerRecord[bytes, bytes], batch: Batch, reason: str, error_type: str
    ) -> None:
        log.warning(
            "dead-lettering unreadable record %s[%d]@%d: %s",
            record.topic,
            record.partition,
            record.offset,
            reason,
        )
        self.metrics.poison_records.labels(record.topic).inc()
        batch.poison.append(
            _dead_record(
                record.value, reason, error_type, record.topic, record.partition, record.offset
            )
        )

    async def _dead_letter(self, records: list[JobDeadLettered]) -> None:
        """Publish the batch's poison records; its offsets are committed only after them."""
        topic = dlq_topic(self.settings.topic_prefix)

        async def once() -> None:
            # A retry after a failure may publish a record twice: the DLQ is for people,
            # who see the same source offset.
            for record in records:
                try:
                    await publish(self.producer, topic, record)
                except MessageSizeTooLargeError:
                    # Retrying the same size can never succeed: keep the head of the original;
                    # the source offset still names where the whole of it is.
                    await publish(self.producer, topic, _shortened(record))

        await retry_until_done(
            once,
            (KafkaError,),
            what="dead-letter publish",
            max_delay_s=self.settings.results_retry_max_s,
        )

    async def _flush(self, batch: Batch) -> None:
        if batch.size:
            await self._write(batch)
        if batch.poison:
            await self._dead_letter(batch.poison)
        self.batches_written += 1
        committed_at = time.time()
        if batch.timestamps:
            self.metrics.lag_seconds.observe(max(0.0, committed_at - min(batch.timestamps) / 1000))
        if self.observer is not None:
            self.observer(batch.timestamps, committed_at)
        await self._commit(batch.offsets)
        self._report_lag(batch.offsets)

    async def _write(self, batch: Batch) -> None:
        """Store the batch's records; those the database refuses alone are dead-lettered."""
        pending: list[list[Item]] = [batch.items]
        stored: list[Item] = []
        while pending:
            items = pending.pop()
            fault = await self._write_items(items)
            if fault is None:
                stored.extend(items)
                continue
            if len(items) == 1:
                self._reject(items[0], batch, fault)
                continue
            # Bisect: the halves go in read order (the stack pops the first half first).
            middle = len(items) // 2
            pending.append(items[middle:])
            pending.append(items[:middle])
        _log_final(stored)

    async def _write_items(self, items: list[Item]) -> WriteFault | None:
        """Write `items` in one transaction, waiting out lost connections; the refusal if any."""
        s = self.settings
        events, chunks = _split(items)
        failures = 0
        while True:
            started = time.perf_counter()
            try:
                async with self.pool.acquire() as conn:
                    outcome = await write_batch(conn, events, chunks, self.rules)
            except Exception as exc:  # noqa: BLE001  # sorted below: retried, or isolated
                fault = classify(exc)
            else:
                self._count(outcome, len(items), time.perf_counter() - started)
                if failures:
                    log.info("batch written after %d failed tries", failures)
                self.db_ok = True
                return None
            self.metrics.write_failures.labels(fault.kind).inc()
            if not fault.retriable:
                log.warning(
                    "write of %d records refused (%s); splitting (jobs %s)",
                    len(items),
                    fault,
                    _job_ids(items),
                )
                self.db_ok = True  # the database answered: it is the records
                return fault
            self.db_ok = False
            delay = min(s.results_retry_max_s, s.results_retry_base_s * 2**failures)
            failures += 1
            log.warning("batch write failed (%s); retry %d in %.2fs", fault, failures, delay)
            self.metrics.write_retries.inc()
            await asyncio.sleep(delay)

    def _count(self, outcome: BatchOutcome, size: int, seconds: float) -> None:
        self.metrics.write_latency.observe(seconds)
        self.metrics.batch_size.observe(size)
        for kind_, count in outcome.events.items():
            self.metrics.events_persisted.labels(kind_).inc(count)
        self.metrics.chunks_persisted.inc(outcome.chunks)
        for result in outcome.results:
            model = self.rules.prices.label(result.model)
            self.metrics.tokens.labels(model, "prompt").inc(result.prompt_tokens)
            self.metrics.tokens.labels(model, "completion").inc(result.completion_tokens)
            if result.estimated_cost_usd is None:
                self.unpriced.saw(result.model)
            else:
                self.metrics.cost.labels(model).inc(float(result.estimated_cost_usd))
        self.metrics.events_ignored.inc(outcome.ignored)
        self.metrics.owner_changes_refused.inc(outcome.owner_conflicts)

    def _reject(self, item: Item, batch: Batch, fault: WriteFault) -> None:
        log.warning(
            "dead-lettering record %s[%d]@%d the database refused: %s",
            item.topic,
            item.partition,
            item.offset,
            fault.reason,
            extra={"job_id": item.record.job_id},
        )
        self.metrics.records_rejected.labels(item.topic).inc()
        batch.poison.append(
            _dead_record(
                item.value,
                fault.reason,
                fault.error_type,
                item.topic,
                item.partition,
                item.offset,
            )
        )

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        assigned = self.consumer.assignment()
        mine = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if not mine:
            return
        try:
            await self.consumer.commit(mine)
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance took the partitions: their records come again, and are deduplicated.
            self.metrics.commit_failures.inc()
            log.warning("offset commit refused: %s", exc)
        except KafkaError as exc:
            self.metrics.commit_failures.inc()
            log.warning("offset commit failed: %s", exc)

    def _report_lag(self, offsets: dict[TopicPartition, int]) -> None:
        self._positions.update(offsets)
        lag: dict[str, int] = {}
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            position = self._positions.get(tp)
            if high is not None and position is not None:
                lag[tp.topic] = lag.get(tp.topic, 0) + max(0, high - position)
        for topic, value in lag.items():
            self.metrics.lag_records.labels(topic).set(value)


def _dead_record(
    value: bytes | None, reason: str, error_type: str, topic: str, partition: int, offset: int
) -> JobDeadLettered:
    """The DLQ record, its strings cleaned: a job id or reason read from a broken record may
    hold a lone surrogate, which cannot be encoded to publish it (and would stall the batch)."""
    dead = poison_record(value, clean_text(reason), error_type, topic, partition, offset)
    job_id = clean_text(dead.job_id)
    return dead if job_id == dead.job_id else dead.model_copy(update={"job_id": job_id})


_ORIGINAL_HEAD_CHARS = 64 * 1024


def _shortened(dead: JobDeadLettered) -> JobDeadLettered:
    data = dead.data
    note = f" (original of {len(data.original)} characters cut to its first {_ORIGINAL_HEAD_CHARS})"
    return dead.model_copy(
        update={
            "data": data.model_copy(
                update={
                    "original": data.original[:_ORIGINAL_HEAD_CHARS],
                    "reason": data.reason + note,
                }
            )
        }
    )


def _first_line(exc: BaseException) -> str:
    lines = str(exc).splitlines()
    return lines[0] if lines else type(exc).__name__


def _job_ids(items: Sequence[Item]) -> str:
    ids: Sequence[str] = sorted({i.record.job_id for i in items})
    return ", ".join(ids[:10]) + (" …" if len(ids) > 10 else "")


_FINAL = (JobCompleted, JobFailed, JobCancelled)


def _log_final(items: list[Item]) -> None:
    """One line per job that reached a final state: operators follow a trace id to here."""
    if not log.isEnabledFor(logging.INFO):
        return
    for item in items:
        if not isinstance(item.record, StoredEvent):
            continue
        event = item.record.event
        if isinstance(event, _FINAL):
            log.info(
                "stored %s of attempt %d",
                event.type,
                event.data.attempt,
                extra={"job_id": event.job_id, "trace_id": event.trace_id},
            )
