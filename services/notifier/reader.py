"""Reads the events and chunks topics, with no consumer group, into the hub.

Every notifier instance reads the whole events topic, and its own share of the
chunks topic's partitions (`placement.py`: instance i of n reads the partitions
p with p % n == i; one instance reads them all). On start it replays the chunks
of its partitions within a lookback window and the whole
events topic (events are few) up to the end offsets it saw then: events within
the window rebuild the jobs, older ones only who owns each job and how it
ended. So jobs already running are resumable, and older jobs' owners known,
before it reports ready; after that it follows the topics live.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from services.notifier.metrics import NotifierMetrics
from services.notifier.placement import Placement
from shared.contracts import (
    LIFECYCLE_TYPES,
    LifecycleEvent,
    TokenChunk,
    parse_record,
)
from shared.follower import Batch, PartitionFollower, StartAt
from shared.kafka import DEFAULT_FETCH_MAX_WAIT_MS, DEFAULT_FETCH_MIN_BYTES, KafkaOptions

log = logging.getLogger(__name__)


class Reader:
    def __init__(
        self,
        bootstrap: str,
        events_topic: str,
        chunks_topic: str,
        *,
        lookback_s: float,
        on_event: Callable[[LifecycleEvent, float], None],
        on_chunk: Callable[[TokenChunk, float], None],
        on_history: Callable[[LifecycleEvent], None] | None = None,
        metrics: NotifierMetrics,
        placement: Placement | None = None,
        client_id: str = "notifier",
        security: KafkaOptions | None = None,
        fetch_max_wait_ms: int = DEFAULT_FETCH_MAX_WAIT_MS,
        fetch_min_bytes: int = DEFAULT_FETCH_MIN_BYTES,
        after_batch: Callable[[], None] | None = None,
        max_records: int = 2000,
    ) -> None:
        self.events_topic = events_topic
        self.chunks_topic = chunks_topic
        self.lookback_s = lookback_s
        self.on_event = on_event
        self.on_chunk = on_chunk
        self.on_history = on_history
        # Writes what the batch queued: the next poll may return buffered records at once,
        # without the event loop turning in between.
        self.after_batch = after_batch
        self.metrics = metrics
        self.placement = placement if placement is not None else Placement()
        events_start = StartAt.LOOKBACK if on_history is None else StartAt.BEGINNING
        self.follower = PartitionFollower(
            bootstrap,
            [events_topic, chunks_topic],
            self._handle,
            start={events_topic: events_start, chunks_topic: StartAt.LOOKBACK},
            lookback_s=lookback_s,
            poll_ms=200,
            max_records=max_records,
            choose=self._owned,
            name=client_id,
            security=security,
            client_id=client_id,
            auto_offset_reset="latest",
            fetch_max_wait_ms=fetch_max_wait_ms,
            fetch_min_bytes=fetch_min_bytes,
        )
        self._records_chunks = metrics.records.labels(chunks_topic)
        self._records_events = metrics.records.labels(events_topic)
        # Per events partition: records before this offset are older than the window.
        self._window: dict[TopicPartition, int] = {}

    def _owned(self, found: list[TopicPartition]) -> list[TopicPartition]:
        """Every events partition, and this instance's share of the chunks topic's."""
        chunks_topic = self.chunks_topic
        count = sum(1 for tp in found if tp.topic == chunks_topic)
        owned = set(self.placement.owned(count))
        self.metrics.owned_partitions.set(len(owned))
        if not owned:
            log.warning(
                "notifier instance %d of %d owns none of the %d chunk partitions: it serves no job",
                self.placement.instance,
                self.placement.instances,
                count,
            )
        return [tp for tp in found if tp.topic != chunks_topic or tp.partition in owned]

    @property
    def consumer(self) -> AIOKafkaConsumer:
        return self.follower.consumer

    @property
    def caught_up(self) -> asyncio.Event:
        return self.follower.caught_up

    async def start(self, timeout_s: float = 30.0) -> None:
        follower = self.follower
        await follower.start(timeout_s)
        if self.on_history is not None:
            self._window = {
                tp: offset
                for tp, offset in follower.window_starts.items()
                if tp.topic == self.events_topic
            }

    async def stop(self) -> None:
        await self.follower.stop()

    async def run(self) -> None:
        follower = self.follower
        while True:
            await follower.poll()
            # Let the clients' own tasks (SSE streams) take what this batch queued before the
            # next poll: that may return records already fetched without the event loop
            # turning, and an outbox nobody takes from would fill with one fetch's chunks.
            await asyncio.sleep(0)

    def _handle(self, batch: Batch) -> None:
        chunks_topic = self.chunks_topic
        for tp, records in batch.items():
            now = time.monotonic()
            if tp.topic == chunks_topic:
                self._records_chunks.inc(len(records))
                for record in records:
                    self._chunk(record.value or b"", now)
            else:
                self._records_events.inc(len(records))
                window = self._window.get(tp, 0)
                for record in records:
                    self._event(record.value or b"", now, record.offset < window)
        if batch and self.after_batch is not None:
            self.after_batch()

    def _chunk(self, value: bytes, now: float) -> None:
        try:
            chunk = TokenChunk.model_validate_json(value)
        except ValidationError:
            log.warning("unreadable record on %s skipped", self.chunks_topic)
            return
        try:
            self.on_chunk(chunk, now)
        except Exception:  # a process boundary: one bad job must not stop the fan-out
            log.exception("chunk of job %s not delivered", chunk.job_id)

    def _event(self, value: bytes, now: float, old: bool) -> None:
        try:
            event = parse_record(value)
        except ValidationError:
            log.warning("unreadable record on %s skipped", self.events_topic)
            return
        if not isinstance(event, LIFECYCLE_TYPES):
            return
        try:
            if old and self.on_history is not None:
                self.on_history(event)
            else:
                self.on_event(event, now)
        except Exception:  # a process boundary: one bad job must not stop the fan-out
            log.exception("event %s of job %s not delivered", event.type, event.job_id)

    def update_lag(self) -> None:
        """Set the lag gauge per topic from the fetcher's high watermarks."""
        follower = self.follower
        lag: dict[str, int] = {self.events_topic: 0, self.chunks_topic: 0}
        for tp in follower.partitions:
            high = follower.consumer.highwater(tp)
            if high is not None and tp in follower.next_offsets:
                lag[tp.topic] += max(0, high - follower.next_offsets[tp])
        for topic, value in lag.items():
            self.metrics.consumer_lag.labels(topic).set(value)
