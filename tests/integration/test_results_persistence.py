"""The results service over the real Kafka and PostgreSQL: idempotent, order-tolerant writes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from services.results.migrations import load, migrate
from shared.contracts import parse_record
from shared.topics import dlq_topic, events_topic
from tests.integration.results_kit import (
    caught_up,
    count,
    job_script,
    publish_script,
    running,
    settings_for,
)
from tests.support import read_topic, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


async def test_replayed_events_store_one_result(
    kafka_bootstrap: str,
    topic_prefix: str,
    database_url: str,
    auth_secret: str,
    producer: AIOKafkaProducer,
) -> None:
    script = job_script(texts=("a", "b", "c"))
    settings = settings_for(kafka_bootstrap, topic_prefix, database_url, auth_secret)
    async with running(settings) as service:
        await publish_script(producer, topic_prefix, script)
        await publish_script(producer, topic_prefix, script)  # a producer retry, a replay
        await wait_for(lambda: caught_up(service), message="results never caught up")
        # Tokens and cost are counted once per stored result, not per delivery.
        assert service.metrics.tokens.labels("gpt-4o-mini", "prompt")._value.get() == 10
        assert service.metrics.chunks_persisted._value.get() == 3
        assert service.metrics.cost.labels("gpt-4o-mini")._value.get() > 0
        # And a second consumer group reading everything again from the start.
    replay = settings_for(
        kafka_bootstrap,
        topic_prefix,
        database_url,
        auth_secret,
        results_group_id=f"{topic_prefix}-replay",
    )
    async with running(replay) as service:
        await wait_for(lambda: caught_up(service), message="replay never caught up")
        assert service.metrics.events_persisted.labels("job.completed")._value.get() == 0
        assert service.metrics.chunks_persisted._value.get() == 0
        assert service.metrics.cost.labels("gpt-4o-mini")._value.get() == 0
    assert await count(database_url, "SELECT count(*) FROM jobs") == 1
    assert await count(database_url, "SELECT count(*) FROM results") == 1
    assert await count(database_url, "SELECT count(*) FROM events") == 3
    assert await count(database_url, "SELECT count(*) FROM chunks") == 3
    assert await count(database_url, "SELECT count(*) FROM jobs WHERE status = 'completed'") == 1


async def test_a_batch_of_stored_and_new_chunks_stores_each_new_one_once(
    kafka_bootstrap: str,
    topic_prefix: str,
    database_url: str,
    auth_secret: str,
    producer: AIOKafkaProducer,
) -> None:
    first = job_script("j", outcome="running", texts=("a", "b"))
    settings = settings_for(kafka_bootstrap, topic_prefix, database_url, auth_secret)
    async with running(settings) as service:
        await publish_script(producer, topic_prefix, first)
        await wait_for(lambda: caught_up(service), message="first chunks not written")
        # The streamer's chunks again (a rebalance re-reads them) with the ones after them.
        again = job_script("j", texts=("a2", "b2", "c", "d"))
        again.events = again.events[-1:]
        await publish_script(producer, topic_prefix, again)
        await wait_for(lambda: caught_up(service), message="mixed batch not written")
        assert service.metrics.chunks_persisted._value.get() == 4
    conn = await asyncpg.connect(database_url)
    try:
        texts = [
            r["text"]
            for r in await conn.fetch("SELECT text FROM chunks WHERE job_id = 'j' ORDER BY seq")
        ]
        status = await conn.fetchval("SELECT status FROM jobs WHERE job_id = 'j'")
    finally:
        await conn.close()
    assert texts == ["a", "b", "c", "d"]  # a stored chunk is never written over
    assert status == "completed"


async def test_late_accepted_completes_the_job_and_parses_its_response(
    kafka_bootstrap: str,
    topic_prefix: str,
    database_url: str,
    auth_secret: str,
    producer: AIOKafkaProducer,
) -> None:
    report = {
        "findings": [
            {"severity": "high", "title": "reentrancy", "detail": "withdraw"},
            {"severity": "high", "title": "overflow", "detail": "sum"},
            {"severity": "info", "title": "naming", "detail": "style"},
        ]
    }
    script = job_script(job_type="security_analysis", response=json.dumps(report))
    accepted, rest = script.events[0], script.events[1:]
    settings = settings_for(kafka_bootstrap, topic_prefix, database_url, auth_secret)
    async with running(settings) as service:
        script.events = rest
        await publish_script(producer, topic_prefix, script)
        await wait_for(lambda: caught_up(service), message="first records not written")
        script.events, script.chunks = [accepted], []
        await publish_script(producer, topic_prefix, script)
        await wait_for(lambda: caught_up(service), message="late accepted not written")
    conn = await asyncpg.connect(database_url)
    try:
        job = await conn.fetchrow("SELECT * FROM jobs")
        result = await conn.fetchrow("SELECT * FROM results")
    finally:
        await conn.close()
    assert job["status"] == "completed"
    assert job["user_id"] == "alice"
    assert job["queue_wait_ms"] == 50.0
    assert json.loads(result["parsed_response"]) == report
    assert json.loads(result["severity_breakdown"]) == {
        "critical": 0,
        "high": 2,
        "medium": 0,
        "low": 0,
        "info": 1,
    }
    # The configured breakdown field carries the same counts under its path.
    assert json.loads(result["breakdown"]) == {
        "findings[].severity": json.loads(result["severity_breakdown"])
    }


async def test_invalid_structured_response_is_stored_unparsed(
    kafka_bootstrap: str,
    topic_prefix: str,
    database_url: str,
    auth_secret: str,
    producer: AIOKafkaProducer,
) -> None:
    script = job_script(job_type="sentiment_analysis", response='{"label": "happy"')
    settings = settings_for(kafka_bootstrap, topic_prefix, database_url, auth_secret)
    async with running(settings) as service:
        await publish_script(producer, topic_prefix, script)
        await wait_for(lambda: caught_up(service), message="job not written")
    conn = await asyncpg.connect(database_url)
    try:
        result = await conn.fetchrow("SELECT * FROM results")
    finally:
        await conn.close()
    assert result["response"] == '{"label": "happy"'
    assert result["parsed_response"] is None
    assert result["parse_error"].startswith("not JSON")


async def test_poison_records_go_to_the_dlq_with_their_reason_and_the_rest_is_stored(
    kafka_bootstrap: str,
    topic_prefix: str,
    database_url: str,
    auth_secret: str,
    producer: AIOKafkaProducer,
) -> None:
    script = job_script()
    settings = settings_for(kafka_bootstrap, topic_prefix, database_url, auth_secret)
    async with running(settings) as service:
        not_json = await producer.send_and_wait(
            events_topic(topic_prefix), b"{not json", key=script.accepted.job_id.encode()
        )
        mystery = await producer.send_and_wait(
            events_topic(topic_prefix), b'{"type": "job.mystery"}', key=b"x"
        )
        await publish_script(producer, topic_prefix, script)
        await wait_for(lambda: caught_up(service), message="poison record stopped the consumer")
        poison = service.metrics.poison_records.labels(events_topic(topic_prefix))._value.get()
        assert poison == 2
    assert await count(database_url, "SELECT count(*) FROM results") == 1
    values = await read_topic(
        kafka_bootstrap, dlq_topic(topic_prefix), until=lambda vs: len(vs) >= 2
    )
    # The two keys may land on different partitions, so the DLQ holds them in either order;
    # each dead letter points back at its own original record.
    letters = [parse_record(v).data for v in values]
    dead = {d.original: d for d in letters}
    assert len(letters) == 2
    assert set(dead) == {"{not json", '{"type": "job.mystery"}'}
    for original, sent in (("{not json", not_json), ('{"type": "job.mystery"}', mystery)):
        assert (dead[original].source_partition, dead[original].source_offset) == (
            sent.partition,
            sent.offset,
        )
    assert {d.source_topic for d in dead.values()} == {events_topic(topic_prefix)}
    assert all(d.reason for d in dead.values())


async def test_migrations_rerun_on_existing_database_keep_rows(
    kafka_bootstrap: str,
    topic_prefix: str,
    database_url: str,
    auth_secret: str,
    producer: AIOKafkaProducer,
) -> None:
    settings = settings_for(kafka_bootstrap, topic_prefix, database_url, auth_secret)
    async with running(settings) as service:
        await publish_script(producer, topic_prefix, job_script())
        await wait_for(lambda: caught_up(service), message="job not written")
    conn = await asyncpg.connect(database_url)
    try:
        versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert await migrate(conn) == []  # nothing left to apply
    finally:
        await conn.close()
    async with running(settings):  # a restart migrates again
        pass
    conn = await asyncpg.connect(database_url)
    try:
        again = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        shipped = [m.version for m in load()]  # every migration of the package, once each
        assert [r["version"] for r in again] == [r["version"] for r in versions] == shipped
        assert await conn.fetchval("SELECT count(*) FROM jobs") == 1
        assert await conn.fetchval("SELECT count(*) FROM results") == 1
        assert await conn.fetchval("SELECT count(*) FROM chunks") == 2
    finally:
        await conn.close()


async def test_retention_forgets_texts_of_old_jobs_only(
    kafka_bootstrap: str,
    topic_prefix: str,
    database_url: str,
    auth_secret: str,
    producer: AIOKafkaProducer,
) -> None:
    old = job_script("old", submitted_at=datetime.now(UTC) - timedelta(days=10))
    fresh = job_script("fresh", submitted_at=datetime.now(UTC))
    settings = settings_for(kafka_bootstrap, topic_prefix, database_url, auth_secret)
    async with running(settings) as service:
        await publish_script(producer, topic_prefix, old)
        await publish_script(producer, topic_prefix, fresh)
        await wait_for(lambda: caught_up(service), message="jobs not written")
    swept = settings_for(
        kafka_bootstrap,
        topic_prefix,
        database_url,
        auth_secret,
        results_retention_days=7,
        results_retention_interval_s=0.1,
    )
    async with running(swept) as service:
        await wait_for(
            lambda: service.metrics.retention_cleared._value.get() == 1,
            message="the old job was not swept",
        )
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT j.job_id, j.prompt, r.response, r.prompt_tokens,"
            " (SELECT count(*) FROM chunks c WHERE c.job_id = j.job_id) AS chunks"
            " FROM jobs j JOIN results r USING (job_id) ORDER BY j.job_id"
        )
        # The facts the rows were built from forget the texts too, and keep the rest.
        facts = await conn.fetch(
            "SELECT job_id, type, payload->'data' AS data FROM events"
            " WHERE type IN ('job.accepted', 'job.completed') ORDER BY job_id, type"
        )
    finally:
        await conn.close()
    assert [tuple(r) for r in rows] == [
        ("fresh", "Analyse this", "Hello world", 10, 2),
        ("old", None, None, 10, 0),
    ]
    texts = {(f["job_id"], f["type"]): json.loads(f["data"]) for f in facts}
    assert texts[("fresh", "job.accepted")]["prompt"] == "Analyse this"
    assert texts[("fresh", "job.completed")]["response"] == "Hello world"
    assert "prompt" not in texts[("old", "job.accepted")]
    assert "response" not in texts[("old", "job.completed")]
    assert texts[("old", "job.accepted")]["user_id"] == texts[("fresh", "job.accepted")]["user_id"]
    assert texts[("old", "job.completed")]["usage"] == texts[("fresh", "job.completed")]["usage"]
