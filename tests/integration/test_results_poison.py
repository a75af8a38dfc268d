"""A record PostgreSQL cannot take never stalls the results service: it is cleaned, or it is
isolated from its batch and dead-lettered while every other record is stored."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from shared.contracts import JobDeadLettered, parse_record
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


async def _status(database_url: str, job_id: str) -> str | None:
    conn = await asyncpg.connect(database_url)
    try:
        status: str | None = await conn.fetchval(
            "SELECT status FROM jobs WHERE job_id = $1", job_id
        )
        return status
    finally:
        await conn.close()


async def _dead(bootstrap: str, prefix: str, n: int) -> list[JobDeadLettered]:
    values = await read_topic(bootstrap, dlq_topic(prefix), until=lambda vs: len(vs) >= n)
    dead = [parse_record(v) for v in values]
    assert all(isinstance(d, JobDeadLettered) for d in dead)
    return dead  # type: ignore[return-value]  # checked just above


async def test_nul_escape_in_metadata_is_stored_cleaned_and_the_next_job_is_stored(
    kafka_bootstrap: str,
    topic_prefix: str,
    database_url: str,
    auth_secret: str,
    producer: AIOKafkaProducer,
) -> None:
    # What the gateway accepts for {"prompt":"x","metadata":{"n":"\\u0000"}}.
    poisoned = job_script("nul", metadata={"n": "\x00", "k\x00": ["a\x00b", {"deep": "\x00"}]})
    raw: dict[str, Any] = json.loads(poisoned.accepted.to_bytes())
    value = json.dumps(raw).encode()
    assert b"\\u0000" in value  # the JSON escape, exactly as it travels
    settings = settings_for(kafka_bootstrap, topic_prefix, database_url, auth_secret)
    async with running(settings) as service:
        await producer.send_and_wait(events_topic(topic_prefix), value=value, key=b"nul")
        for event in poisoned.events[1:]:
            await producer.send_and_wait(
                events_topic(topic_prefix), value=event.to_bytes(), key=b"nul"
            )
        await publish_script(producer, topic_prefix, job_script("after"))
        await wait_for(lambda: caught_up(service), message="the persister stalled")
        assert await _status(database_url, "after") == "completed"
        assert await _status(database_url, "nul") == "completed"
        assert service.metrics.records_rejected.labels(events_topic(topic_prefix))._value.get() == 0
    conn = await asyncpg.connect(database_url)
    try:
        metadata = json.loads(await conn.fetchval("SELECT metadata FROM jobs WHERE job_id = 'nul'"))
    finally:
        await conn.close()
    assert metadata == {"n": "\ufffd", "k\ufffd": ["a\ufffdb", {"deep": "\ufffd"}]}


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


async def test_too_deep_structured_response_is_dead_lettered_and_its_batch_and_the_next_stored(
    kafka_bootstrap: str,
    topic_prefix: str,
    database_url: str,
    auth_secret: str,
    producer: AIOKafkaProducer,
) -> None:
    # Parsing this response by its job type's schema raises RecursionError.
    deep = job_script("deep", job_type="security_analysis", response=_deep(50_000))
    neighbours = [job_script(f"n{i}") for i in range(6)]
    # Everything is on the topics before the service starts: one batch holds it all.
    for script in (*neighbours[:3], deep, *neighbours[3:]):
        await publish_script(producer, topic_prefix, script)
    settings = settings_for(kafka_bootstrap, topic_prefix, database_url, auth_secret)
    async with running(settings) as service:
        await wait_for(lambda: caught_up(service), message="the batch was not moved past")
        assert service.persister is not None
        first_batches = service.persister.batches_written
        assert first_batches >= 1
        await publish_script(producer, topic_prefix, job_script("next"))
        await wait_for(lambda: caught_up(service), message="the next batch was not stored")
        rejected = service.metrics.records_rejected.labels(events_topic(topic_prefix))
        assert rejected._value.get() == 1
    (dead,) = await _dead(kafka_bootstrap, topic_prefix, 1)
    completed = deep.events[-1]
    assert dead.job_id == "deep"
    assert dead.data.error_type == "RecursionError"
    assert "recursion" in dead.data.reason
    assert dead.data.source_topic == events_topic(topic_prefix)
    assert dead.data.source_offset is not None
    assert parse_record(dead.data.original).event_id == completed.event_id
    for script in (*neighbours, job_script("next")):
        assert await _status(database_url, script.accepted.job_id) == "completed"
    # The deep job's other records were stored: it stays running, its chunks are there.
    assert await _status(database_url, "deep") == "running"
    assert await count(database_url, "SELECT count(*) FROM chunks WHERE job_id = 'deep'") == 2


async def test_an_error_escaping_a_batch_rewinds_so_no_record_is_skipped(
    kafka_bootstrap: str,
    topic_prefix: str,
    database_url: str,
    auth_secret: str,
    producer: AIOKafkaProducer,
) -> None:
    settings = settings_for(kafka_bootstrap, topic_prefix, database_url, auth_secret)
    async with running(settings) as service:
        persister = service.persister
        assert persister is not None
        publish_dlq = persister._dead_letter
        calls = 0

        async def fails_once(records: list[JobDeadLettered]) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("a bug between storing a batch and committing it")
            await publish_dlq(records)

        persister._dead_letter = fails_once  # type: ignore[method-assign]
        await producer.send_and_wait(events_topic(topic_prefix), value=b"{not json", key=b"x")
        await publish_script(producer, topic_prefix, job_script("before"))
        await wait_for(
            lambda: service.metrics.persister_restarts._value.get() == 1,
            message="the injected error did not escape the batch",
        )
        await publish_script(producer, topic_prefix, job_script("after"))
        await wait_for(lambda: caught_up(service), message="results never caught up")
        assert calls >= 2
    (dead,) = await _dead(kafka_bootstrap, topic_prefix, 1)
    assert dead.data.original == "{not json"  # read again after the rewind, not skipped
    assert await _status(database_url, "before") == "completed"
    assert await _status(database_url, "after") == "completed"


async def test_a_record_too_big_to_dead_letter_whole_is_dead_lettered_cut_and_the_rest_stored(
    kafka_bootstrap: str,
    topic_prefix: str,
    database_url: str,
    auth_secret: str,
    producer: AIOKafkaProducer,
) -> None:
    # Near the size limit, and every byte doubles when escaped inside the DLQ record's JSON.
    huge = b'"' * 900_000
    settings = settings_for(kafka_bootstrap, topic_prefix, database_url, auth_secret)
    async with running(settings) as service:
        await producer.send_and_wait(events_topic(topic_prefix), value=huge, key=b"huge")
        await publish_script(producer, topic_prefix, job_script("after"))
        await wait_for(lambda: caught_up(service), message="the persister stalled")
    (dead,) = await _dead(kafka_bootstrap, topic_prefix, 1)
    assert dead.data.original == '"' * len(dead.data.original)
    assert 0 < len(dead.data.original) < len(huge)
    assert "cut" in dead.data.reason
    assert await _status(database_url, "after") == "completed"


async def test_a_late_accepted_fact_for_a_stored_too_deep_response_keeps_the_job_owned(
    kafka_bootstrap: str,
    topic_prefix: str,
    database_url: str,
    auth_secret: str,
    producer: AIOKafkaProducer,
) -> None:
    script = job_script("deep", job_type="security_analysis", response=_deep(50_000))
    accepted, rest = script.events[0], script.events[1:]
    settings = settings_for(kafka_bootstrap, topic_prefix, database_url, auth_secret)
    async with running(settings) as service:
        # Without its job type the completion is stored unparsed; the type comes later.
        script.events = rest
        await publish_script(producer, topic_prefix, script)
        await wait_for(lambda: caught_up(service), message="completion not written")
        script.events, script.chunks = [accepted], []
        await publish_script(producer, topic_prefix, script)
        await wait_for(lambda: caught_up(service), message="late accepted not written")
        assert service.metrics.records_rejected.labels(events_topic(topic_prefix))._value.get() == 0
    conn = await asyncpg.connect(database_url)
    try:
        job = await conn.fetchrow("SELECT user_id, status FROM jobs WHERE job_id = 'deep'")
        error = await conn.fetchval("SELECT parse_error FROM results WHERE job_id = 'deep'")
    finally:
        await conn.close()
    assert (job["user_id"], job["status"]) == ("alice", "completed")
    assert "too deeply" in error


async def test_the_text_of_a_nul_escape_in_metadata_is_stored_as_it_came(
    kafka_bootstrap: str,
    topic_prefix: str,
    database_url: str,
    auth_secret: str,
    producer: AIOKafkaProducer,
) -> None:
    # {"prompt":"x","metadata":{"n":"\\u0000"}}: a backslash and five characters, not a NUL.
    # Once the store stripped "\u0000" from its encoded JSON and left it unreadable.
    text = {"n": "\\u0000", "\\u0000": ["a\\u0000b", "\\\\u0000"]}
    script = job_script("text", metadata=text)
    settings = settings_for(kafka_bootstrap, topic_prefix, database_url, auth_secret)
    async with running(settings) as service:
        await publish_script(producer, topic_prefix, script)
        await publish_script(producer, topic_prefix, job_script("after"))
        await wait_for(lambda: caught_up(service), message="the persister stalled")
        assert await _status(database_url, "text") == "completed"
        assert await _status(database_url, "after") == "completed"
    conn = await asyncpg.connect(database_url)
    try:
        metadata = json.loads(
            await conn.fetchval("SELECT metadata FROM jobs WHERE job_id = 'text'")
        )
    finally:
        await conn.close()
    assert metadata == text
