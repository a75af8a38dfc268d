"""Property: whatever the records on the events and chunks topics hold, the results service
keeps going, stores every well-formed record and dead-letters, with a reason, what it cannot
store. One service and one database serve the whole run; each example uses fresh job ids."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.results.app import ResultsService
from shared.contracts import JobDeadLettered, TokenChunk, parse_record
from shared.text import clean_text
from shared.topics import chunks_topic, dlq_topic, events_topic
from tests.integration.results_kit import (
    JobScript,
    caught_up,
    job_script,
    publish_script,
    running,
    settings_for,
)
from tests.support import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

EXAMPLES = 30
OUTCOMES = ("completed", "failed", "cancelled")
FINAL = {"completed": "completed", "failed": "failed", "cancelled": "cancelled"}

# ---- what replaces a field: any JSON value, as the text that travels ----

TEXT = st.text(
    st.characters(codec=None, exclude_categories=()) | st.sampled_from("\x00\ud800\udfff"),
    max_size=30,
)
NUMBERS = st.one_of(
    st.integers(),
    st.sampled_from([2**31, -(2**31) - 1, 2**63, 10**30, -1]),
    st.floats(),  # NaN and infinities travel as NaN / Infinity tokens
)
VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | NUMBERS | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=10,
)


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


FRAGMENTS = st.one_of(
    VALUES.map(json.dumps),  # ensure_ascii: NULs and lone surrogates as \\u escapes
    st.integers(1, 3000).map(_deep),  # deep nesting
    st.integers(900, 3000).map(lambda d: json.dumps(_deep(d))),  # a text too deep to parse
    st.just("1" + "0" * 5000),  # a number past Python's 4300-digit conversion limit
    st.sampled_from(['"\\u0000"', '"a\\u0000b"', '{"\\u0000": "\\u0000"}', '"\\ud800"']),
)


def _paths(record: dict[str, Any]) -> list[tuple[str, ...]]:
    """Every field of a record: the envelope's, its body's, and one level further in."""
    paths: list[tuple[str, ...]] = [(k,) for k in record]
    for key, value in record["data"].items():
        paths.append(("data", key))
        if isinstance(value, dict):
            paths.extend(("data", key, k) for k in value)
    paths.append(("data", "unknown_field"))
    return paths


@dataclass
class Published:
    topic: str
    partition: int
    offset: int
    value: bytes


@st.composite
def mangled_job(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    """One job's records, all seven kinds across examples, some fields replaced."""
    outcome = draw(st.sampled_from(OUTCOMES))
    script = job_script(
        uuid.uuid4().hex,
        job_type=draw(st.sampled_from(["analysis", "security_analysis"])),
        outcome=outcome,
        retries=draw(st.integers(0, 1)),
        texts=("one", "two"),
    )
    records: list[tuple[str, dict[str, Any]]] = [
        ("events", json.loads(e.to_bytes())) for e in script.events
    ] + [("chunks", json.loads(c.to_bytes())) for c in script.chunks]
    chosen = draw(st.lists(st.integers(0, len(records) - 1), min_size=1, max_size=3, unique=True))
    out: list[tuple[str, bytes]] = []
    for index, (kind, record) in enumerate(records):
        if index not in chosen:
            out.append((kind, json.dumps(record).encode()))
            continue
        paths = _paths(record)
        picks = draw(st.lists(st.integers(0, len(paths) - 1), min_size=1, max_size=3, unique=True))
        fragments: dict[str, str] = {}
        for n, pick in enumerate(picks):
            target: dict[str, Any] = record
            *parents, leaf = paths[pick]
            for parent in parents:
                if not isinstance(target.get(parent), dict):
                    break
                target = target[parent]
            else:
                marker = f"@@mangled{n}@@"
                target[leaf] = marker
                fragments[json.dumps(marker)] = draw(FRAGMENTS)
        text = json.dumps(record)
        for marker, fragment in fragments.items():
            text = text.replace(marker, fragment, 1)
        out.append((kind, text.encode("utf-8", "surrogatepass")))
    return out


@st.composite
def examples(draw: st.DrawFn) -> tuple[list[tuple[str, bytes, bytes]], list[JobScript]]:
    """The mangled job's records interleaved with well-formed jobs', in publish order."""
    bad = [(k, v, b"bad") for k, v in draw(mangled_job())]
    good_scripts = [
        job_script(uuid.uuid4().hex, outcome=draw(st.sampled_from(OUTCOMES)))
        for _ in range(draw(st.integers(1, 2)))
    ]
    good: list[tuple[str, bytes, bytes]] = []
    for script in good_scripts:
        key = script.accepted.job_id.encode()
        good += [("events", e.to_bytes(), key) for e in script.events]
        good += [("chunks", c.to_bytes(), key) for c in script.chunks]
    merged: list[tuple[str, bytes, bytes]] = []
    while bad or good:
        take_bad = bool(bad) and (not good or draw(st.booleans()))
        merged.append((bad if take_bad else good).pop(0))
    return merged, good_scripts


class Run:
    """The long-lived pieces of the property run, driven from the hypothesis thread."""

    def __init__(
        self,
        service: ResultsService,
        producer: AIOKafkaProducer,
        dlq: AIOKafkaConsumer,
        db: asyncpg.Connection,
        prefix: str,
    ) -> None:
        self.service = service
        self.producer = producer
        self.dlq = dlq
        self.db = db
        self.prefix = prefix
        self.dead: dict[tuple[str, int, int], JobDeadLettered] = {}

    async def publish(self, kind: str, value: bytes, key: bytes) -> Published:
        topic = events_topic(self.prefix) if kind == "events" else chunks_topic(self.prefix)
        meta = await self.producer.send_and_wait(topic, value=value, key=key)
        return Published(topic, meta.partition, meta.offset, value)

    async def read_dlq(self) -> None:
        parts = list(self.dlq.assignment())
        ends = await self.dlq.end_offsets(parts)
        while True:
            behind = [tp for tp in parts if await self.dlq.position(tp) < ends[tp]]
            if not behind:
                return
            for records in (await self.dlq.getmany(timeout_ms=500)).values():
                for r in records:
                    assert r.value is not None
                    dead = parse_record(r.value)
                    assert isinstance(dead, JobDeadLettered)
                    d = dead.data
                    assert d.source_partition is not None and d.source_offset is not None
                    self.dead[(d.source_topic, d.source_partition, d.source_offset)] = dead

    async def stored(self, value: bytes) -> bool:
        """The record, as the service reads it, is in the database (or is a refused read)."""
        try:
            record = parse_record(value)
        except ValidationError:
            return False
        if isinstance(record, TokenChunk):
            found = await self.db.fetchval(
                "SELECT true FROM chunks WHERE job_id = $1 AND attempt = $2 AND seq = $3",
                clean_text(record.job_id),
                record.data.attempt,
                record.data.seq,
            )
        else:
            found = await self.db.fetchval(
                "SELECT true FROM events WHERE event_id = $1", record.event_id
            )
        return bool(found)

    async def example(self, merged: list[tuple[str, bytes, bytes]], good: list[JobScript]) -> None:
        published = [await self.publish(*item) for item in merged]
        sentinel = job_script(uuid.uuid4().hex)
        await publish_script(self.producer, self.prefix, sentinel)
        await wait_for(
            lambda: caught_up(self.service), timeout=30, message="the consumer stopped moving"
        )
        status = await self.db.fetchval(
            "SELECT status FROM jobs WHERE job_id = $1", sentinel.accepted.job_id
        )
        assert status == "completed", "the sentinel job after the bad records was not stored"
        await self.read_dlq()
        where = {(p.topic, p.partition, p.offset): p for p in published}
        for script in good:
            job_id = script.accepted.job_id
            row = await self.db.fetchrow(
                "SELECT status, (SELECT count(*) FROM events e WHERE e.job_id = j.job_id) AS ev,"
                " (SELECT count(*) FROM chunks c WHERE c.job_id = j.job_id) AS ch"
                " FROM jobs j WHERE job_id = $1",
                job_id,
            )
            assert row is not None, f"well-formed job {job_id} not stored"
            assert row["status"] == FINAL[str(script.events[-1].type).split(".")[1]]
            assert (row["ev"], row["ch"]) == (len(script.events), len(script.chunks))
        for key, record in where.items():
            dead = self.dead.get(key)
            if dead is not None:
                assert dead.data.reason, f"dead-lettered without a reason: {record.value[:200]!r}"
                assert dead.data.original == record.value.decode("utf-8", "replace")
                continue
            assert await self.stored(record.value), (
                f"neither stored nor dead-lettered: {record.value[:300]!r}"
            )


@pytest.fixture
async def dlq(kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    topic = dlq_topic(topic_prefix)
    partitions = consumer.partitions_for_topic(topic) or set()
    if not partitions:
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic) or set()
    consumer.assign([TopicPartition(topic, p) for p in partitions])
    await consumer.seek_to_beginning()
    yield consumer
    await consumer.stop()


# The service's own clients (aiokafka's jitter) use `random` on the other thread meanwhile.
@pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)
async def test_any_record_is_stored_or_dead_lettered_and_never_stalls_the_consumer(
    kafka_bootstrap: str,
    topic_prefix: str,
    database_url: str,
    auth_secret: str,
    producer: AIOKafkaProducer,
    dlq: AIOKafkaConsumer,
) -> None:
    settings_ = settings_for(kafka_bootstrap, topic_prefix, database_url, auth_secret)
    loop = asyncio.get_running_loop()
    async with running(settings_) as service:
        db = await asyncpg.connect(database_url)
        try:
            run = Run(service, producer, dlq, db, topic_prefix)

            @given(examples())
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                # Each example is a round trip through Kafka and PostgreSQL: report the first
                # failing one as it is rather than spend minutes shrinking it.
                phases=(Phase.explicit, Phase.generate),
                suppress_health_check=list(HealthCheck),
            )
            def prop(example: tuple[list[tuple[str, bytes, bytes]], list[JobScript]]) -> None:
                future = asyncio.run_coroutine_threadsafe(run.example(*example), loop)
                future.result(timeout=60)

            await asyncio.wait_for(asyncio.to_thread(prop), timeout=110)
        finally:
            await db.close()
        # Every bad record was handled inside its batch: nothing escaped the loop.
        assert service.metrics.persister_restarts._value.get() == 0
        assert len(run.dead) > 0  # the run did exercise the dead-letter path
