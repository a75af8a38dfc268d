"""The faults of a chaos round and the waits between them: which Kafka node leads the
busiest chunk partition, kill -9 and restart of one process, and when the cluster is whole
again (every partition back to its full set of in-sync replicas)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.kafka import with_admin


async def describe(bootstrap: str, topics: list[str] | None = None) -> list[dict[str, Any]]:
    """Partitions of `topics` (all, when None) with leader, replicas and ISR."""

    async def work(admin: AIOKafkaAdminClient, _deadline: float) -> list[dict[str, Any]]:
        names = topics if topics is not None else list(await admin.list_topics())
        described: list[dict[str, Any]] = await admin.describe_topics(names)
        return described

    return await with_admin(bootstrap, work, timeout_s=30)


async def busiest_partition(
    bootstrap: str, topic: str, consumer: AIOKafkaConsumer, before: dict[int, int]
) -> tuple[int, int, dict[int, int]]:
    """(partition, leader node id, end offsets): the partition of `topic` that grew most
    since `before`, and the node that leads it now."""
    (described,) = await describe(bootstrap, [topic])
    leaders = {p["partition"]: p["leader"] for p in described["partitions"]}
    tps = [TopicPartition(topic, p) for p in sorted(leaders)]
    ends = {tp.partition: off for tp, off in (await consumer.end_offsets(tps)).items()}
    partition = max(ends, key=lambda p: (ends[p] - before.get(p, 0), -p))
    return partition, int(leaders[partition]), ends


async def wait_until_whole(bootstrap: str, timeout_s: float) -> None:
    """Until every partition of every topic has all its replicas in sync and a leader."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    short: list[str] = []
    while loop.time() < deadline:
        short = [
            f"{t['topic']}/{p['partition']}"
            for t in await describe(bootstrap)
            for p in t["partitions"]
            if p["leader"] < 0 or set(p["isr"]) != set(p["replicas"])
        ]
        if not short:
            return
        await asyncio.sleep(0.5)
    raise TimeoutError(f"partitions still short of replicas after {timeout_s:g}s: {short[:5]}")
