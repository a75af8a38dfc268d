"""Reads every partition of some topics with no consumer group, so each instance sees every record.

`PartitionFollower` owns the group-less consumer: it assigns the partitions by hand (all of
them, or the subset `choose` keeps of those Kafka's metadata lists), starts each
topic at its beginning, its end or the first record of a lookback window, says when it has read
up to the end offsets it saw at start, and hands each polled batch to one handler.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from shared.kafka import KafkaOptions, assign_every_partition

log = logging.getLogger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]
Batch: TypeAlias = Mapping[TopicPartition, list[Record]]


class StartAt(Enum):
    """Where a topic's partitions are read from at start."""

    BEGINNING = "beginning"
    END = "end"
    LOOKBACK = "lookback"  # the first record of the lookback window; the end if there is none


def each_record(handle: Callable[[Record], None]) -> Callable[[Batch], None]:
    """A batch handler that hands over one record at a time, in partition order."""

    def on_batch(batch: Batch) -> None:
        for records in batch.values():
            for record in records:
                handle(record)

    return on_batch


class PartitionFollower:
    """One group-less consumer over every partition of `topics`, feeding `on_batch`.

    `on_batch` is called after every poll, an empty one included, so a handler may also do its
    periodic work there. With `backoff_s` (first, longest delay) a Kafka error of a poll is
    counted through `on_kafka_error` and retried after a growing pause; without it, it ends
    `run()`. `consumer_options` go to the `AIOKafkaConsumer` as they are (client id, fetch
    tuning, offset reset); `security` is the output of `shared.kafka.client_options`.
    `choose`, given every partition of `topics` found at start, returns the ones to read
    (a static share of a topic); the start positions and `caught_up` cover only those.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        on_batch: Callable[[Batch], None],
        *,
        start: StartAt | Mapping[str, StartAt] = StartAt.END,
        lookback_s: float | None = None,
        poll_ms: int = 500,
        max_records: int | None = None,
        backoff_s: tuple[float, float] | None = None,
        on_kafka_error: Callable[[], None] = lambda: None,
        choose: Callable[[list[TopicPartition]], list[TopicPartition]] | None = None,
        name: str = "follower",
        security: KafkaOptions | None = None,
        **consumer_options: Any,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.on_batch = on_batch
        self._start = start
        self.lookback_s = lookback_s
        self.poll_ms = poll_ms
        self.max_records = max_records
        self.backoff_s = backoff_s
        self.on_kafka_error = on_kafka_error
        self.choose = choose
        self.name = name
        self._options = {**(security or {}), **consumer_options}
        self._consumer: AIOKafkaConsumer | None = None
        self._stopped = False
        self.assigned = False
        self.partitions: list[TopicPartition] = []
        self.next_offsets: dict[TopicPartition, int] = {}  # the offset after the last one read
        # Per partition, the first offset inside the lookback window (without one, or with no
        # record inside it: the end offset seen at start).
        self.window_starts: dict[TopicPartition, int] = {}
        self.caught_up = asyncio.Event()  # set once every partition is read to its start end
        self._targets: dict[TopicPartition, int] = {}
        self._delay = backoff_s[0] if backoff_s else 0.0

    @property
    def consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError(f"{self.name}: the follower is not started")
        return self._consumer

    def _start_of(self, topic: str) -> StartAt:
        return self._start if isinstance(self._start, StartAt) else self._start[topic]

    async def start(self, timeout_s: float = 30.0) -> None:
        """Assign every partition and seek each to its start; a second call does nothing."""
        if self._consumer is not None or self._stopped:
            return
        consumer = self._consumer = AIOKafkaConsumer(
            **self._options,
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            # Facts written in a transaction that aborted never happened.
            isolation_level="read_committed",
        )
        try:
            await consumer.start()
            await self._seek_to_starts(consumer, timeout_s)
        except BaseException:
            self._consumer = None  # a failed start leaves nothing behind, and may be tried again
            await consumer.stop()
            raise
        self.assigned = True

    async def _seek_to_starts(self, consumer: AIOKafkaConsumer, timeout_s: float) -> None:
        tps = await assign_every_partition(consumer, self.topics, timeout_s=timeout_s)
        if self.choose is not None:
            tps = sorted(self.choose(tps))
            consumer.assign(tps)  # before any fetch: the others are never read
        self.partitions = tps
        found = {}
        if self.lookback_s is not None:
            since_ms = int((time.time() - self.lookback_s) * 1000)
            found = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            at = found.get(tp)
            self.window_starts[tp] = at.offset if at is not None else ends[tp]
        from_beginning = [tp for tp in tps if self._start_of(tp.topic) is StartAt.BEGINNING]
        if from_beginning:
            await consumer.seek_to_beginning(*from_beginning)
        for tp in tps:
            start = self._start_of(tp.topic)
            if start is StartAt.LOOKBACK:
                consumer.seek(tp, self.window_starts[tp])
            elif start is StartAt.END:
                consumer.seek(tp, ends[tp])
        # Resolve every position now: nothing published after start may be skipped.
        for tp in tps:
            self.next_offsets[tp] = await consumer.position(tp)
        self._targets = {tp: end for tp, end in ends.items() if self.next_offsets[tp] < end}
        if not self._targets:
            self.caught_up.set()

    async def _check_caught_up(self) -> None:
        consumer = self.consumer
        left = {}
        for tp, end in self._targets.items():
            # The position also counts offsets with no record to read (compacted, markers).
            if self.next_offsets[tp] < end and await consumer.position(tp) < end:
                left[tp] = end
        self._targets = left
        if not left:
            self.caught_up.set()

    async def poll(self) -> None:
        """Poll one batch into `on_batch` (or back off after a Kafka error, if so configured)."""
        try:
            batch = await self.consumer.getmany(
                timeout_ms=self.poll_ms, max_records=self.max_records
            )
        except KafkaError as exc:
            if self.backoff_s is None:
                raise
            self.on_kafka_error()
            log.warning("%s: fetch failed (%r); retry in %.1fs", self.name, exc, self._delay)
            await asyncio.sleep(self._delay)
            self._delay = min(self._delay * 2, self.backoff_s[1])
            return
        if self.backoff_s is not None:
            self._delay = self.backoff_s[0]
        next_offsets = self.next_offsets
        for tp, records in batch.items():
            if records:
                next_offsets[tp] = records[-1].offset + 1
        self.on_batch(batch)
        if self._targets:
            await self._check_caught_up()

    async def catch_up(self) -> None:
        """Poll until every partition is read up to the end offsets seen at start."""
        while not self.caught_up.is_set():
            await self.poll()

    async def run(self) -> None:
        while True:
            await self.poll()

    async def stop(self) -> None:
        """Close the consumer; safe before start and twice. A stopped follower stays stopped."""
        if self._consumer is None or self._stopped:
            return
        self._stopped = True
        await self._consumer.stop()
