"""Which notifier instance serves a job: its chunks' partition, split statically.

Chunk records are keyed by job id and placed by Kafka's default partitioner
(murmur2 of the key), so every service can tell a job's chunk partition from
its id and the topic's partition count alone. Notifier instance `i` of `n`
reads the partitions `p` with `p % n == i`; the gateway names that instance
in a job's links, and any other instance sends the client there.
"""

from __future__ import annotations

from aiokafka.partitioner import murmur2


def chunk_partition(job_id: str, partitions: int) -> int:
    """The partition of the chunks topic that holds `job_id`'s chunks."""
    if partitions < 1:
        raise ValueError("a topic has at least one partition")
    return int(murmur2(job_id.encode()) & 0x7FFFFFFF) % partitions


def owned_partitions(instance: int, instances: int, partitions: int) -> list[int]:
    """The chunk partitions notifier `instance` (0-based) of `instances` reads."""
    if not 0 <= instance < instances:
        raise ValueError(f"instance {instance} is not in 0..{instances - 1}")
    return [p for p in range(partitions) if p % instances == instance]


def notifier_for(job_id: str, partitions: int, instances: int) -> int:
    """The notifier instance (0-based) that serves `job_id`."""
    return chunk_partition(job_id, partitions) % instances
