"""Records the streamer cannot run: dead-lettered with the reason, and their owner told.

A job record rejected at intake still ends visibly: a `job.failed` fact under its job
id (from the record key, else the raw JSON), so its owner sees why and the gateway
releases the job's in-flight slot. Kafka errors while writing either are retried until
the broker has them: the intake must not move past a record nothing was said about.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.streamer.metrics import StreamerMetrics
from shared.contracts import (
    Envelope,
    JobDeadLettered,
    JobFailed,
    JobFailedData,
    TokenUsage,
    new_trace_id,
)
from shared.deadletter import poison_record, recover_job_id
from shared.kafka import publish
from shared.retry import retry_until_done
from shared.topics import dlq_topic, events_topic

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 500
# The DLQ copy of a record must fit in one Kafka record (1 MiB by default) even when every
# byte is escaped in JSON (up to six characters each); the rest stays in the source topic.
MAX_ORIGINAL_BYTES = 128 * 1024
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
# Event ids derived from the record's position: every instance (and every re-read after a
# restart) writes the same ids, so consumers deduplicate repeated rejections by event_id.
_NAMESPACE = uuid.UUID("6c0b5f0e-8a53-4c8e-9d8e-2b1f3f4d7a11")


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that cannot be run or obeyed, where it was read, and why."""

    key: bytes | None
    value: bytes | None
    reason: str
    error_type: str
    topic: str
    partition: int
    offset: int

    def event_id(self, what: str) -> uuid.UUID:
        return uuid.uuid5(_NAMESPACE, f"{self.topic}/{self.partition}/{self.offset}/{what}")


def printable(reason: str) -> str:
    """A reason safe to publish: valid UTF-8 (no lone surrogates), bounded in length."""
    return reason.encode("utf-8", "replace").decode("utf-8")[:MAX_REASON_CHARS]


def _document(value: bytes | None) -> dict[str, Any]:
    try:
        doc = json.loads(value or b"")
    except (ValueError, RecursionError):
        return {}
    return doc if isinstance(doc, dict) else {}


def failed_event(rejected: Rejected, job_id: str) -> JobFailed:
    """The `job.failed` fact of a job whose record could not be run: nothing was streamed."""
    doc = _document(rejected.value)
    data = doc.get("data")
    attempt = data.get("attempt") if isinstance(data, dict) else None
    trace_id = doc.get("trace_id")
    return JobFailed(
        event_id=rejected.event_id("failed"),
        job_id=job_id,
        trace_id=(
            trace_id
            if isinstance(trace_id, str) and _TRACE_ID.fullmatch(trace_id)
            else new_trace_id()
        ),
        data=JobFailedData(
            attempt=attempt if type(attempt) is int and 1 <= attempt <= 1_000_000 else 1,
            reason=printable(f"rejected at intake: {rejected.reason}"),
            error_type=rejected.error_type,
            retriable=False,
            usage=TokenUsage(),
        ),
    )


def dead_letter_record(rejected: Rejected, job_id: str | None) -> JobDeadLettered:
    """The DLQ record of a rejected record: its bytes (a bounded copy), where, and why."""
    value = rejected.value or b""
    reason = printable(rejected.reason)
    if len(value) > MAX_ORIGINAL_BYTES:
        reason += f" (original cut to {MAX_ORIGINAL_BYTES} of {len(value)} bytes)"
    return poison_record(
        value[:MAX_ORIGINAL_BYTES],
        reason,
        rejected.error_type,
        rejected.topic,
        rejected.partition,
        rejected.offset,
        job_id=job_id or "unknown",
    ).model_copy(update={"event_id": rejected.event_id("dlq")})


class Rejects:
    """Writes rejections: job records at once (the intake waits), control records in turn."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        prefix: str,
        metrics: StreamerMetrics,
        *,
        first_delay_s: float,
        max_delay_s: float,
        control_backlog: int = 100,
    ) -> None:
        self.producer = producer
        self.prefix = prefix
        self.metrics = metrics
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        # The control reader must never wait on the DLQ: its rejections queue here, bounded
        # in count, each a bounded copy of its record.
        self._control: asyncio.Queue[JobDeadLettered] = asyncio.Queue(maxsize=control_backlog)

    async def reject_job(self, rejected: Rejected) -> None:
        """Dead-letter a job record and publish its `job.failed`; returns once both are written.

        Kafka errors are retried with backoff until the broker answers; only a shutdown
        (cancellation) ends the wait, and then the record's offset is not committed.
        """
        job_id = recover_job_id(rejected.key, rejected.value)
        log.warning(
            "rejecting %s[%d]@%d (job %s): %s",
            rejected.topic,
            rejected.partition,
            rejected.offset,
            job_id,
            printable(rejected.reason),
            extra={"job_id": job_id},
        )
        await self._dead_letter(dead_letter_record(rejected, job_id))
        if job_id is None:
            self.metrics.rejected_without_job_id.inc()
            return
        await self._publish(events_topic(self.prefix), failed_event(rejected, job_id), job_id)
        self.metrics.rejected_jobs_failed.labels(rejected.error_type).inc()

    def reject_control(self, rejected: Rejected) -> None:
        """Queue a control record for the DLQ without waiting; dropped (counted) when full."""
        self.metrics.control_records_skipped.labels(rejected.error_type).inc()
        log.warning(
            "skipping control record %s[%d]@%d: %s",
            rejected.topic,
            rejected.partition,
            rejected.offset,
            printable(rejected.reason),
        )
        job_id = recover_job_id(rejected.key, rejected.value)
        try:
            self._control.put_nowait(dead_letter_record(rejected, job_id))
        except asyncio.QueueFull:
            self.metrics.control_dead_letters_dropped.inc()

    async def control_loop(self) -> None:
        """Dead-letter queued control records one after another, retrying Kafka errors."""
        while True:
            record = await self._control.get()
            await self._dead_letter(record)

    async def _dead_letter(self, record: JobDeadLettered) -> None:
        job_id = None if record.job_id == "unknown" else record.job_id
        await self._publish(dlq_topic(self.prefix), record, job_id)
        self.metrics.dead_lettered.labels(record.data.error_type).inc()

    async def _publish(self, topic: str, record: Envelope, job_id: str | None) -> None:
        await retry_until_done(
            lambda: publish(self.producer, topic, record),
            (KafkaError,),
            what=f"writing a rejection to {topic}",
            first_delay_s=self.first_delay_s,
            max_delay_s=self.max_delay_s,
            log_extra={"job_id": job_id},
        )
