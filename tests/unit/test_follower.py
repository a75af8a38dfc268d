"""The partition follower's logic that needs no broker: batches, backoff, start and stop."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaConnectionError

from shared.follower import Batch, PartitionFollower, Record, StartAt, each_record

TP = TopicPartition("p.events", 0)


def record(offset: int, tp: TopicPartition = TP) -> Record:
    return ConsumerRecord(
        topic=tp.topic,
        partition=tp.partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=None,
        value=b"v",
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=0,
        headers=[],
    )


class ScriptedConsumer:
    """Stands in for a started consumer: each poll returns (or raises) the next scripted item."""

    def __init__(self, *script: Batch | Exception) -> None:
        self.script = list(script)
        self.stopped = 0

    async def getmany(self, *_: Any, **__: Any) -> Batch:
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    async def stop(self) -> None:
        self.stopped += 1


def started(follower: PartitionFollower, consumer: ScriptedConsumer) -> PartitionFollower:
    follower._consumer = consumer  # type: ignore[assignment]
    return follower


def test_each_record_hands_over_records_in_partition_order() -> None:
    seen: list[tuple[int, int]] = []
    other = TopicPartition("p.events", 1)
    handle = each_record(lambda r: seen.append((r.partition, r.offset)))
    handle({TP: [record(0), record(1)], other: [record(5, other)]})
    assert seen == [(0, 0), (0, 1), (1, 5)]


async def test_every_poll_reaches_the_handler_an_empty_one_too() -> None:
    batches: list[Batch] = []
    follower = started(
        PartitionFollower("127.0.0.1:1", ["p.events"], batches.append),
        ScriptedConsumer({}, {TP: [record(7), record(8)]}),
    )
    await follower.poll()
    await follower.poll()
    assert [dict(b) for b in batches] == [{}, {TP: [record(7), record(8)]}]
    assert follower.next_offsets[TP] == 9


async def test_kafka_errors_are_counted_and_retried_with_a_growing_pause() -> None:
    errors: list[None] = []
    batches: list[Batch] = []
    follower = started(
        PartitionFollower(
            "127.0.0.1:1",
            ["p.events"],
            batches.append,
            backoff_s=(0.01, 0.03),
            on_kafka_error=lambda: errors.append(None),
        ),
        ScriptedConsumer(*[KafkaConnectionError()] * 3, {TP: [record(0)]}),
    )
    delays = []
    for _ in range(3):
        delays.append(follower._delay)
        await follower.poll()
    assert delays == [0.01, 0.02, 0.03] and len(errors) == 3 and not batches
    await follower.poll()
    assert len(batches) == 1 and follower._delay == 0.01  # a good poll resets the pause


async def test_without_a_backoff_a_kafka_error_ends_the_reading() -> None:
    follower = started(
        PartitionFollower("127.0.0.1:1", ["p.events"], lambda _: None),
        ScriptedConsumer(KafkaConnectionError()),
    )
    with pytest.raises(KafkaConnectionError):
        await follower.run()


async def test_stop_is_safe_before_start_and_twice() -> None:
    follower = PartitionFollower("127.0.0.1:1", ["p.events"], lambda _: None)
    await follower.stop()
    consumer = ScriptedConsumer()
    started(follower, consumer)
    await follower.stop()
    await follower.stop()
    assert consumer.stopped == 1
    await follower.start()  # a stopped follower stays stopped: no new consumer
    assert follower.consumer is consumer


async def test_a_follower_not_started_has_no_consumer() -> None:
    follower = PartitionFollower(
        "127.0.0.1:1", ["p.events", "p.chunks"], lambda _: None, start={"p.events": StartAt.END}
    )
    with pytest.raises(RuntimeError, match="not started"):
        _ = follower.consumer
    assert not follower.assigned and not follower.caught_up.is_set()
