"""Feeds the events view from the events topic: every partition, no consumer group.

On start it seeks each partition to the first record of the lookback window
(`offsets_for_times`), reads up to the end offsets it saw then, and follows from there.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from services.gateway.view import EventsView, fingerprint
from shared.contracts import JobAccepted, LifecycleEvent, parse_record
from shared.kafka import KafkaOptions, assign_every_partition
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
        self.consumer = AIOKafkaConsumer(
            **(security or {}),
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id="gateway-events",
        )
        self._targets: dict[TopicPartition, int] = {}
        self._caught_up = asyncio.Event()
        self.skipped = 0

    async def start(self, timeout_s: float = 30.0) -> None:
        consumer = self.consumer
        await consumer.start()
        tps = await assign_every_partition(consumer, [self.topic], timeout_s=timeout_s)
        since_ms = int((time.time() - self.lookback_s) * 1000)
        starts = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            found = starts.get(tp)
            if found is None:
                consumer.seek(tp, ends[tp])
            else:
                consumer.seek(tp, found.offset)
            # Resolve the position now: nothing published after start may be skipped.
            await consumer.position(tp)
        self._targets = {tp: end for tp, end in ends.items() if await consumer.position(tp) < end}
        if not self._targets:
            self._caught_up.set()

    def ready(self) -> bool:
        return self._caught_up.is_set()

    async def caught_up(self) -> None:
        await self._caught_up.wait()

    async def stop(self) -> None:
        await self.consumer.stop()

    async def loop(self) -> None:
        last_expiry = 0.0
        while True:
            batch = await self.consumer.getmany(timeout_ms=500, max_records=2000)
            for tp, records in batch.items():
                for record in records:
                    self._apply(record.value, record.offset)
                target = self._targets.get(tp)
                if target is not None and records and records[-1].offset + 1 >= target:
                    del self._targets[tp]
                    if not self._targets:
                        self._caught_up.set()
            now = time.time()
            if now - last_expiry >= 1.0:
                self.view.expire(now)
                last_expiry = now

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
