"""The partition follower on the real broker: where it starts, when it is caught up, a broker
error, and stop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import ConsumerStoppedError, KafkaConnectionError

from shared.follower import PartitionFollower, Record, StartAt, each_record
from shared.topics import events_topic
from tests.support import wait_for

pytestmark = pytest.mark.kafka


@pytest.fixture
async def follow(kafka_bootstrap: str) -> AsyncIterator[Any]:
    """Builds followers that collect record values, and stops each at the end of the test."""
    followers: list[PartitionFollower] = []

    def build(topic: str, seen: list[bytes], **options: Any) -> PartitionFollower:
        def keep(record: Record) -> None:
            seen.append(record.value or b"")

        follower = PartitionFollower(kafka_bootstrap, [topic], each_record(keep), **options)
        followers.append(follower)
        return follower

    yield build
    for follower in followers:
        await follower.stop()


async def send(producer: AIOKafkaProducer, topic: str, *values: bytes, **kw: Any) -> None:
    for value in values:
        await producer.send_and_wait(topic, value, **kw)


async def test_from_the_beginning_it_is_caught_up_once_the_old_records_are_read(
    producer: AIOKafkaProducer, topic_prefix: str, follow: Any
) -> None:
    topic = events_topic(topic_prefix)
    old = [f"old-{i}".encode() for i in range(12)]
    await send(producer, topic, *old[:6], partition=0)
    await send(producer, topic, *old[6:], partition=3)
    seen: list[bytes] = []
    follower = follow(topic, seen, start=StartAt.BEGINNING)
    await follower.start()
    assert follower.assigned and not follower.caught_up.is_set()
    async with asyncio.timeout(15):
        await follower.catch_up()
    assert sorted(seen) == sorted(old)


async def test_from_the_end_it_skips_the_past_but_nothing_sent_after_start(
    producer: AIOKafkaProducer, topic_prefix: str, follow: Any
) -> None:
    topic = events_topic(topic_prefix)
    await send(producer, topic, b"before", partition=1)
    seen: list[bytes] = []
    follower = follow(topic, seen, start=StartAt.END, poll_ms=100)
    await follower.start()
    assert follower.caught_up.is_set()  # nothing to read up to
    await send(producer, topic, b"after-1", b"after-2", partition=1)
    task = asyncio.create_task(follower.run())
    try:
        await wait_for(lambda: len(seen) >= 2, timeout=15, message="the new records were read")
        assert seen == [b"after-1", b"after-2"]
    finally:
        task.cancel()


async def test_a_lookback_starts_each_partition_at_its_first_record_inside_the_window(
    producer: AIOKafkaProducer, topic_prefix: str, follow: Any
) -> None:
    topic = events_topic(topic_prefix)
    hour_ago = int((time.time() - 3600) * 1000)
    await send(producer, topic, b"stale-1", b"stale-2", partition=2, timestamp_ms=hour_ago)
    await send(producer, topic, b"fresh", partition=2)
    await send(producer, topic, b"stale-only", partition=0, timestamp_ms=hour_ago)
    seen: list[bytes] = []
    follower = follow(topic, seen, start=StartAt.LOOKBACK, lookback_s=60.0)
    await follower.start()
    starts = {tp.partition: offset for tp, offset in follower.window_starts.items()}
    assert starts == {0: 1, 1: 0, 2: 2, 3: 0}  # a partition with nothing recent: its end
    async with asyncio.timeout(15):
        await follower.catch_up()
    assert seen == [b"fresh"]


async def test_a_broker_error_is_counted_and_retried_and_no_record_is_lost(
    producer: AIOKafkaProducer, topic_prefix: str, follow: Any
) -> None:
    topic = events_topic(topic_prefix)
    seen: list[bytes] = []
    errors: list[None] = []
    follower = follow(
        topic,
        seen,
        start=StartAt.END,
        poll_ms=100,
        backoff_s=(0.05, 0.2),
        on_kafka_error=lambda: errors.append(None),
    )
    await follower.start()
    consumer = follower.consumer
    real_getmany = consumer.getmany
    failures = [KafkaConnectionError("broker gone"), KafkaConnectionError("still gone")]

    async def flaky_getmany(*partitions: Any, **kw: Any) -> Any:
        if failures:
            raise failures.pop(0)
        return await real_getmany(*partitions, **kw)

    consumer.getmany = flaky_getmany  # type: ignore[method-assign]
    await send(producer, topic, b"r-1", b"r-2", partition=0)
    task = asyncio.create_task(follower.run())
    try:
        await wait_for(lambda: len(seen) >= 2, timeout=15, message="the records were read")
        assert seen == [b"r-1", b"r-2"] and len(errors) == 2
        assert not task.done()
    finally:
        task.cancel()


async def test_stop_ends_the_reading_and_is_safe_twice(topic_prefix: str, follow: Any) -> None:
    follower = follow(events_topic(topic_prefix), [], start=StartAt.END, poll_ms=100)
    await follower.start()
    await follower.start()  # a second start changes nothing
    task = asyncio.create_task(follower.run())
    await asyncio.sleep(0.2)
    await follower.stop()
    await follower.stop()
    async with asyncio.timeout(10):
        with pytest.raises(ConsumerStoppedError):
            await task
