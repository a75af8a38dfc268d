"""The persister: reads events and chunks, writes them in batches, then commits their offsets.

Offsets are committed only after the batch's transaction committed, so a crash
or an outage loses nothing; the writes are idempotent, so what comes again is
harmless. While PostgreSQL is away the batch is retried with capped backoff
and no further record is read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from pydantic import ValidationError

from services.results.metrics import ResultsMetrics
from services.results.settings import ResultsSettings
from services.results.store import write_batch
from shared.contracts import (
    LIFECYCLE_TYPES,
    JobCancelled,
    JobCompleted,
    JobDeadLettered,
    JobFailed,
    LifecycleEvent,
    TokenChunk,
    parse_record,
)
from shared.deadletter import poison_record
from shared.kafka import publish
from shared.retry import retry_until_done
from shared.topics import dlq_topic

log = logging.getLogger(__name__)

# Failures of the connection itself: the server is down, restarting or unreachable.
CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
)

# (Kafka timestamps of the batch's records in ms, wall time of the commit in s)
CommitObserver = Callable[[list[int], float], None]


@dataclass
class Batch:
    events: list[LifecycleEvent]
    chunks: list[TokenChunk]
    offsets: dict[TopicPartition, int]  # next offset to read, per partition
    timestamps: list[int]
    poison: list[JobDeadLettered] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.events) + len(self.chunks)


class Persister:
    def __init__(
        self,
        settings: ResultsSettings,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        pool: asyncpg.Pool,
        metrics: ResultsMetrics,
        *,
        observer: CommitObserver | None = None,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.producer = producer
        self.pool = pool
        self.metrics = metrics
        self.observer = observer
        self.db_ok = True
        self.batches_written = 0
        self._positions: dict[TopicPartition, int] = {}

    async def run(self) -> None:
        while True:
            batch = await self._collect()
            if batch.offsets:
                await self._flush(batch)

    async def _collect(self) -> Batch:
        """Read until the batch is full or its first record waited the longest allowed."""
        s = self.settings
        batch = Batch([], [], {}, [])
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
            parsed = parse_record(record.value)
        except ValidationError as exc:
            self._poison(record, batch, str(exc).splitlines()[0], "ValidationError")
            return
        if isinstance(parsed, TokenChunk):
            batch.chunks.append(parsed)
        elif isinstance(parsed, LIFECYCLE_TYPES):
            batch.events.append(parsed)
        else:
            self._poison(record, batch, f"unexpected record type {parsed.type}", "WrongType")

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
            poison_record(
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
                await publish(self.producer, topic, record)

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
        s = self.settings
        failures = 0
        while True:
            started = time.perf_counter()
            try:
                async with self.pool.acquire() as conn:
                    outcome = await write_batch(conn, batch.events, batch.chunks, s.price_of)
            except CONNECTION_ERRORS as exc:
                kind, detail = "connection", f"{type(exc).__name__}: {exc}"
            except asyncpg.PostgresError as exc:
                # Not the connection: still retried, as skipping would lose the batch.
                kind, detail = "database", f"{type(exc).__name__}: {exc}"
                log.exception("batch write failed (jobs %s)", _job_ids(batch))
            else:
                self.metrics.write_latency.observe(time.perf_counter() - started)
                self.metrics.batch_size.observe(batch.size)
                for kind_, count in outcome.events.items():
                    self.metrics.events_persisted.labels(kind_).inc(count)
                self.metrics.chunks_persisted.inc(outcome.chunks)
                for result in outcome.results:
                    model = s.model_label(result.model)
                    self.metrics.tokens.labels(model, "prompt").inc(result.prompt_tokens)
                    self.metrics.tokens.labels(model, "completion").inc(result.completion_tokens)
                    self.metrics.cost.labels(model).inc(float(result.estimated_cost_usd))
                self.metrics.events_ignored.inc(outcome.ignored)
                if failures:
                    log.info("batch written after %d failed tries", failures)
                self.db_ok = True
                _log_final(batch.events)
                return
            self.db_ok = False
            self.metrics.write_failures.labels(kind).inc()
            delay = min(s.results_retry_max_s, s.results_retry_base_s * 2**failures)
            failures += 1
            log.warning("batch write failed (%s); retry %d in %.2fs", detail, failures, delay)
            self.metrics.write_retries.inc()
            await asyncio.sleep(delay)

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


def _job_ids(batch: Batch) -> str:
    ids: Sequence[str] = sorted({e.job_id for e in batch.events})
    return ", ".join(ids[:10]) + (" …" if len(ids) > 10 else "")


_FINAL = (JobCompleted, JobFailed, JobCancelled)


def _log_final(events: list[LifecycleEvent]) -> None:
    """One line per job that reached a final state: operators follow a trace id to here."""
    if not log.isEnabledFor(logging.INFO):
        return
    for event in events:
        if isinstance(event, _FINAL):
            log.info(
                "stored %s of attempt %d",
                event.type,
                event.data.attempt,
                extra={"job_id": event.job_id, "trace_id": event.trace_id},
            )
