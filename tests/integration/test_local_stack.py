"""The suite's own Kafka broker and PostgreSQL server are real and reachable."""

from __future__ import annotations

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.kafka import make_producer
from shared.topics import events_topic

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


async def test_kafka_round_trips_a_record(kafka_bootstrap: str, topic_prefix: str) -> None:
    producer = make_producer(kafka_bootstrap)
    await producer.start()
    try:
        meta = await producer.send_and_wait(events_topic(topic_prefix), b"hello", key=b"job-1")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(meta.topic, meta.partition)
        consumer.assign([tp])
        consumer.seek(tp, meta.offset)
        record = await consumer.getone()
    finally:
        await consumer.stop()
    assert (record.key, record.value) == (b"job-1", b"hello")


async def test_postgres_is_a_real_server(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        version = await conn.fetchval("SHOW server_version_num")
        await conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        await conn.copy_records_to_table("t", records=[(i,) for i in range(1000)])
        assert await conn.fetchval("SELECT count(*) FROM t") == 1000
    finally:
        await conn.close()
    assert int(version) >= 160000
