"""Feeds the events view from the events topic: every partition, no consumer group.

On start it seeks each partition to the first record of the lookback window
(`offsets_for_times`), reads up to the end offsets it saw then, and follows from there.

Every gateway reads every event, so a record is read no further than the view needs: a
status change by its key and type header alone (a `job.completed` carries the whole
response, which the view never looks at), an acceptance of a job the view holds already
not at all, and any other acceptance by the few fields it counts, through orjson. A record
without the type header is parsed and validated whole, as before.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

import orjson
from pydantic import ValidationError

from services.gateway.view import EventsView, is_keyed, job_fingerprint
from shared.contracts import LIFECYCLE_TYPES, JobAccepted, LifecycleEvent, parse_record
from shared.follower import Batch, PartitionFollower, Record, StartAt
from shared.kafka import KafkaOptions
from shared.topics import HEADER_TYPE, Priority, events_topic

log = logging.getLogger(__name__)
ACCEPTED = "job.accepted"
# What a header may name: a lifecycle type the view applies by the header alone.
_STATUS_TYPES = frozenset(
    name for t in LIFECYCLE_TYPES if (name := t.model_fields["type"].default) != ACCEPTED
)
_BAD_ACCEPTANCE = (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError)


def apply_event(view: EventsView, record: LifecycleEvent) -> None:
    """Apply one lifecycle record to the view (also used for this instance's own submissions)."""
    at = record.occurred_at.timestamp()
    if isinstance(record, JobAccepted):
        d = record.data
        view.accepted(
            record.job_id,
            owner=d.user_id,
            job_type=d.job_type,
            priority=d.priority,
            submitted_at=d.submitted_at,
            digest=job_fingerprint(
                d.prompt,
                None if d.messages is None else [m.model_dump() for m in d.messages],
                d.job_type,
                d.priority.value,
                d.config.model_dump(),
                None if d.options is None else d.options.model_dump(),
                d.metadata,
                d.retry_of,
            ),
            at=at,
        )
    else:
        view.status_event(record.job_id, record.type, at)


class EventsReader:
    def __init__(
        self,
        bootstrap: str,
        prefix: str,
        view: EventsView,
        *,
        lookback_s: float,
        security: KafkaOptions | None = None,
    ) -> None:
        self.topic = events_topic(prefix)
        self.view = view
        self.lookback_s = lookback_s
        self.follower = PartitionFollower(
            bootstrap,
            [self.topic],
            self._handle,
            start=StartAt.LOOKBACK,
            lookback_s=lookback_s,
            poll_ms=500,
            max_records=2000,
            name="gateway-events",
            security=security,
            auto_offset_reset="earliest",
            client_id="gateway-events",
        )
        self.skipped = 0
        self._last_expiry = 0.0

    async def start(self, timeout_s: float = 30.0) -> None:
        await self.follower.start(timeout_s)

    def ready(self) -> bool:
        return self.follower.caught_up.is_set()

    async def caught_up(self) -> None:
        await self.follower.caught_up.wait()

    async def stop(self) -> None:
        await self.follower.stop()

    async def loop(self) -> None:
        await self.follower.run()

    def _handle(self, batch: Batch) -> None:
        for records in batch.values():
            for record in records:
                self._read(record)
        now = time.time()
        if now - self._last_expiry >= 1.0:
            self.view.expire(now)
            self._last_expiry = now

    def _read(self, record: Record) -> None:
        record_type = _header_type(record)
        job_id = record.key.decode(errors="replace") if record.key else ""
        if record_type is None or not job_id:
            self._apply(record.value, record.offset)
        elif record_type in _STATUS_TYPES:
            # The record's own timestamp stands for occurred_at: it dates a final status.
            self.view.status_event(job_id, record_type, record.timestamp / 1000)
        elif record_type == ACCEPTED and self.view.job(job_id) is None:
            self._accept(job_id, record)

    def _accept(self, job_id: str, record: Record) -> None:
        try:
            envelope: dict[str, Any] = orjson.loads(record.value or b"")
            d = envelope["data"]
            job_type, priority = str(d["job_type"]), Priority(d["priority"])
            # Only a keyed job's body is compared again (a repeated Idempotency-Key).
            digest = (
                job_fingerprint(
                    d["prompt"],
                    d.get("messages"),
                    job_type,
                    priority.value,
                    d["config"],
                    d.get("options"),
                    d.get("metadata") or {},
                    d.get("retry_of"),
                )
                if is_keyed(job_id)
                else b""
            )
            self.view.accepted(
                job_id,
                owner=str(d["user_id"]),
                job_type=job_type,
                priority=priority,
                submitted_at=datetime.fromisoformat(d["submitted_at"]),
                digest=digest,
                at=datetime.fromisoformat(envelope["occurred_at"]).timestamp(),
            )
        except _BAD_ACCEPTANCE:
            self.skipped += 1
            log.warning("unreadable acceptance on %s at offset %d", self.topic, record.offset)

    def _apply(self, value: bytes | None, offset: int) -> None:
        try:
            record = parse_record(value or b"")
        except ValidationError:
            # Every gateway reads the whole topic: a bad record is only skipped here.
            self.skipped += 1
            log.warning("unparseable record on %s at offset %d", self.topic, offset)
            return
        if isinstance(record, LifecycleEvent):
            apply_event(self.view, record)


def _header_type(record: Record) -> str | None:
    for key, value in record.headers:
        if key == HEADER_TYPE:
            return bytes(value).decode(errors="replace")
    return None
