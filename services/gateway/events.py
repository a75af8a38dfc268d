"""Feeds the events view from the events topic: every partition, no consumer group.

On start it seeks each partition to the first record of the lookback window
(`offsets_for_times`), reads up to the end offsets it saw then, and follows from there.
"""

from __future__ import annotations

import logging
import time

from pydantic import ValidationError

from services.gateway.view import EventsView, fingerprint
from shared.contracts import JobAccepted, LifecycleEvent, parse_record
from shared.follower import Batch, PartitionFollower, StartAt
from shared.kafka import KafkaOptions
from shared.topics import events_topic

log = logging.getLogger(__name__)


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
            digest=fingerprint(
                d.prompt, d.job_type, d.priority.value, d.config.model_dump(), d.metadata
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
                self._apply(record.value, record.offset)
        now = time.time()
        if now - self._last_expiry >= 1.0:
            self.view.expire(now)
            self._last_expiry = now

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
