"""Reading, on assignment, the claims of the jobs a partition's new owner may run.

A record not committed yet can only have started after it was appended, so the events
written since the oldest uncommitted record's append time (minus a margin for the
streamers' clocks, which stamp events) hold every claim on it: the read is bounded by
the oldest unfinished job, not by the events topic's retention.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from services.streamer.claims import Claims
from shared.contracts import parse_record
from shared.kafka import assign_every_partition

FETCH_MS = 200


def _consumer(options: Mapping[str, Any], **extra: Any) -> AIOKafkaConsumer:
    # Group-less and never committing: these reads must not disturb the group's offsets.
    return AIOKafkaConsumer(
        **options, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest", **extra
    )


async def oldest_append_ms(
    options: Mapping[str, Any], positions: Mapping[TopicPartition, int], *, timeout_s: float
) -> int | None:
    """The earliest append time of the records at or after `positions`; None if there are none.

    Read uncommitted: an open transaction must not hold the bound back, and an aborted
    record is only older than the committed ones after it, which keeps the bound safe.
    """
    consumer = _consumer(options)
    try:  # stopped even when its start fails or is cancelled: no client left open
        await consumer.start()
        tps = list(positions)
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if positions[tp] < ends[tp]}
        for tp in pending:
            consumer.seek(tp, positions[tp])
        oldest: int | None = None
        async with asyncio.timeout(timeout_s):
            while pending:
                batch = await consumer.getmany(*pending, timeout_ms=FETCH_MS)
                for tp, records in batch.items():
                    if records and tp in pending:
                        pending.discard(tp)
                        first = records[0].timestamp
                        oldest = first if oldest is None else min(oldest, first)
                for tp in list(pending):
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)  # only deleted or control records were left
        return oldest
    finally:
        await consumer.stop()


async def read_claims(
    options: Mapping[str, Any], topic: str, since_ms: int, *, timeout_s: float
) -> tuple[Claims, int]:
    """The claims in the events `topic` from `since_ms` to its end, and how many events that was."""
    claims = Claims()
    read = 0
    # Read committed: an event of an aborted transaction never happened.
    consumer = _consumer(options, isolation_level="read_committed")
    try:
        async with asyncio.timeout(timeout_s):
            await consumer.start()  # within the bound: a slow bootstrap is a failed read
            tps = await assign_every_partition(consumer, [topic], timeout_s=timeout_s)
            starts = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
            ends = await consumer.end_offsets(tps)
            todo: dict[TopicPartition, int] = {}
            for tp in tps:
                start = starts.get(tp)
                if start is not None and start.offset < ends[tp]:
                    consumer.seek(tp, start.offset)
                    todo[tp] = ends[tp]
            while todo:
                batch = await consumer.getmany(*todo, timeout_ms=FETCH_MS, max_records=5000)
                for tp, records in batch.items():
                    end = todo.get(tp)
                    for record in records:
                        if end is None or record.offset >= end:
                            break
                        read += 1
                        try:
                            claims.observe(parse_record(record.value or b""))
                        except ValidationError:
                            continue  # not ours to judge: the events' consumers dead-letter it
                for tp in list(todo):
                    if await consumer.position(tp) >= todo[tp]:
                        del todo[tp]
        return claims, read
    finally:
        await consumer.stop()


class ClaimsSource(Protocol):
    """Where an intake reads, on assignment, the claims on its partitions' jobs."""

    async def load(self, positions: Mapping[TopicPartition, int]) -> tuple[Claims, int]:
        """The claims on the records at or after `positions`, and the events read for them."""


@dataclass(frozen=True, slots=True)
class EventsClaims:
    """Claims read from the events topic, from the oldest uncommitted record on."""

    options: Mapping[str, Any]  # client options with the bootstrap servers
    topic: str
    margin_s: float
    timeout_s: float

    async def load(self, positions: Mapping[TopicPartition, int]) -> tuple[Claims, int]:
        if not positions:
            return Claims(), 0
        oldest = await oldest_append_ms(self.options, positions, timeout_s=self.timeout_s)
        if oldest is None:
            return Claims(), 0  # nothing uncommitted: no job of these partitions ran
        since_ms = oldest - int(self.margin_s * 1000)
        return await read_claims(self.options, self.topic, since_ms, timeout_s=self.timeout_s)
