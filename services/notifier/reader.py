"""Reads the events and chunks topics, with no consumer group, into the hub.

Every notifier instance reads every partition (each one serves its own
clients). On start it replays the chunks of a lookback window and the whole
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
from shared.contracts import (
    LIFECYCLE_TYPES,
    LifecycleEvent,
    TokenChunk,
    parse_record,
)
from shared.kafka import KafkaOptions, assign_every_partition

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
        client_id: str = "notifier",
        security: KafkaOptions | None = None,
    ) -> None:
        self.events_topic = events_topic
        self.chunks_topic = chunks_topic
        self.lookback_s = lookback_s
        self.on_event = on_event
        self.on_chunk = on_chunk
        self.on_history = on_history
        self.metrics = metrics
        self.consumer = AIOKafkaConsumer(
            **(security or {}),
            bootstrap_servers=bootstrap,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_wait_ms=20,
        )
        self.caught_up = asyncio.Event()
        self._targets: dict[TopicPartition, int] = {}
        self._partitions: list[TopicPartition] = []
        self._next: dict[TopicPartition, int] = {}  # offset after the last record read
        # Per events partition: records before this offset are older than the window.
        self._window: dict[TopicPartition, int] = {}

    async def start(self, timeout_s: float = 30.0) -> None:
        consumer = self.consumer
        topics = [self.events_topic, self.chunks_topic]
        await consumer.start()
        self._partitions = await assign_every_partition(consumer, topics, timeout_s=timeout_s)
        since_ms = int((time.time() - self.lookback_s) * 1000)
        found = await consumer.offsets_for_times(dict.fromkeys(self._partitions, since_ms))
        ends = await consumer.end_offsets(self._partitions)
        firsts = await consumer.beginning_offsets(self._partitions)
        for tp in self._partitions:
            at = found.get(tp)
            window = at.offset if at is not None else ends[tp]
            if tp.topic == self.events_topic and self.on_history is not None:
                self._window[tp] = window
                window = firsts[tp]
            consumer.seek(tp, window)
        self._targets = {tp: end for tp, end in ends.items() if end > 0}
        for tp in self._partitions:
            self._next[tp] = await consumer.position(tp)
        await self._check_caught_up()

    async def _check_caught_up(self) -> None:
        if self.caught_up.is_set():
            return
        left = {}
        for tp, end in self._targets.items():
            if self._next.get(tp, 0) < end and await self.consumer.position(tp) < end:
                left[tp] = end
        self._targets = left
        if not left:
            self.caught_up.set()

    async def stop(self) -> None:
        await self.consumer.stop()

    async def run(self) -> None:
        consumer = self.consumer
        chunks_topic = self.chunks_topic
        records_chunks = self.metrics.records.labels(chunks_topic)
        records_events = self.metrics.records.labels(self.events_topic)
        while True:
            batch = await consumer.getmany(timeout_ms=200, max_records=2000)
            for tp, records in batch.items():
                now = time.monotonic()
                if records:
                    self._next[tp] = records[-1].offset + 1
                if tp.topic == chunks_topic:
                    records_chunks.inc(len(records))
                    for record in records:
                        self._chunk(record.value or b"", now)
                else:
                    records_events.inc(len(records))
                    window = self._window.get(tp, 0)
                    for record in records:
                        self._event(record.value or b"", now, record.offset < window)
            await self._check_caught_up()

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
        lag: dict[str, int] = {self.events_topic: 0, self.chunks_topic: 0}
        for tp in self._partitions:
            high = self.consumer.highwater(tp)
            if high is not None and tp in self._next:
                lag[tp.topic] += max(0, high - self._next[tp])
        for topic, value in lag.items():
            self.metrics.consumer_lag.labels(topic).set(value)
