"""A job's notifier is the one reading its chunks' partition, as Kafka places them."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from shared.routing import chunk_partition, notifier_for, owned_partitions


def test_chunk_partition_is_where_the_producer_puts_the_job_key() -> None:
    partitioner = DefaultPartitioner()
    for n in (1, 3, 12):
        parts = list(range(n))
        for i in range(200):
            job_id = f"job-{i}"
            assert chunk_partition(job_id, n) == partitioner(job_id.encode(), parts, parts)


def test_every_partition_has_exactly_one_owner() -> None:
    for instances in (1, 2, 3, 5):
        owned = [owned_partitions(i, instances, 12) for i in range(instances)]
        flat = sorted(p for share in owned for p in share)
        assert flat == list(range(12))


def test_the_owner_of_a_job_reads_its_partition() -> None:
    for i in range(100):
        job_id = f"j{i}"
        owner = notifier_for(job_id, 12, 2)
        assert chunk_partition(job_id, 12) in owned_partitions(owner, 2, 12)
