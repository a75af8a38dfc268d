"""Property: arbitrary records on the job, retry and control topics never stall the streamer.

Every field of RunJob and CancelJob records is replaced by arbitrary JSON (escapes, NULs,
lone surrogates, deep nesting, huge numbers, wrong types), interleaved with well-formed
jobs, against one streamer for the whole run over the real broker. The streamer must run
every well-formed job to completion, dead-letter each record it cannot run or obey with a
reason, and publish job.failed for each rejected job record whose job id is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.streamer.app import StreamerService
from shared.contracts import (
    LIFECYCLE_TYPES,
    CancelJob,
    CancelJobData,
    JobDeadLettered,
    RunJob,
    parse_record,
)
from shared.topics import (
    Priority,
    control_topic,
    dlq_topic,
    events_topic,
    job_topic,
    job_topics,
    retry_topic,
)
from tests.integration.test_streamer_streaming import (
    StartStreamer,
    fresh_sim,
    make_job,
    sim,
    start_streamer,
)
from tests.support import wait_for

pytestmark = pytest.mark.kafka
__all__ = ["fresh_sim", "sim", "start_streamer"]  # fixtures shared with streaming

FINAL = {"job.completed", "job.failed", "job.cancelled"}
Source = tuple[str, int, int]  # topic, partition, offset

RUN_FIELDS: list[tuple[str, ...]] = [
    ("type",),
    ("schema_version",),
    ("event_id",),
    ("job_id",),
    ("occurred_at",),
    ("trace_id",),
    ("data",),
    ("data", "user_id"),
    ("data", "prompt"),
    ("data", "job_type"),
    ("data", "priority"),
    ("data", "config"),
    ("data", "config", "model"),
    ("data", "config", "max_tokens"),
    ("data", "config", "temperature"),
    ("data", "config", "top_p"),
    ("data", "config", "seed"),
    ("data", "metadata"),
    ("data", "submitted_at"),
    ("data", "attempt"),
    ("data", "not_before"),
]
CANCEL_FIELDS: list[tuple[str, ...]] = [
    ("type",),
    ("schema_version",),
    ("event_id",),
    ("job_id",),
    ("occurred_at",),
    ("trace_id",),
    ("data",),
    ("data", "user_id"),
    ("data", "admin"),
    ("data", "reason"),
]

# Text with what breaks naive code: NULs, quotes, backslashes, separators, lone surrogates.
nasty_char = st.one_of(
    st.characters(),
    st.integers(0xD800, 0xDFFF).map(chr),
    st.sampled_from(["\x00", '"', "\\", "\n", "\u2028", "\ufeff", "\U0001f600"]),
)
nasty_text = st.lists(nasty_char, max_size=12).map("".join)
# Values a field might well hold, so that some records still validate: some of those run,
# others validate yet cannot run (a time without a zone, a retry due far ahead).
plausible = st.sampled_from(
    [
        "",
        "urgent",
        "low",
        "analysis",
        "gpt-4o-mini",
        "job.run",
        "job.cancel",
        "2026-12-01T10:00:00",
        "2026-12-01T10:00:00Z",
        "2999-01-01T00:00:00Z",
        "1970-01-01T00:00:00+00:00",
        0,
        1,
        -1,
        2**63,
        1_700_000_000,
        0.5,
        {},
        [],
    ]
)
json_leaf = st.one_of(
    plausible,
    plausible,
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    nasty_text,
)
json_value = st.recursive(
    json_leaf,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(nasty_text, kids, max_size=3),
    max_leaves=8,
)


@st.composite
def json_fragment(draw: st.DrawFn) -> str:
    """Raw JSON text for one field: any value, escaped or raw, or nested past parsers' limits."""
    if draw(st.integers(0, 9)) == 0:
        depth = draw(st.integers(100, 5000))
        return "[" * depth + "]" * depth
    return json.dumps(draw(json_value), ensure_ascii=draw(st.booleans()))


@dataclass
class Garbage:
    topic: str
    key: bytes | None
    value: bytes
    key_job_id: str | None  # the job id a reader of the key would find


@st.composite
def mutated(draw: st.DrawFn, fields: list[tuple[str, ...]], base: dict[str, Any]) -> bytes:
    # A third of the records change one field to a plausible value: some of those still
    # validate, so the run also covers records that run, or validate but cannot run.
    mild = draw(st.integers(0, 2)) == 0
    size = 1 if mild else 3
    paths = draw(st.lists(st.sampled_from(fields), min_size=1, max_size=size, unique=True))
    doc = json.loads(json.dumps(base))
    fragments: dict[str, str] = {}
    for n, path in enumerate(paths):
        holder = doc
        for step in path[:-1]:
            if not isinstance(holder.get(step), dict):
                holder[step] = {}
            holder = holder[step]
        marker = f"@@mutation{n}@@"
        holder[path[-1]] = marker
        fragments[json.dumps(marker)] = (
            json.dumps(draw(plausible | st.text(max_size=8))) if mild else draw(json_fragment())
        )
    text = json.dumps(doc)
    for marker, fragment in fragments.items():
        text = text.replace(marker, fragment)
    return text.encode("utf-8", "surrogatepass")  # raw lone surrogates become invalid UTF-8


@st.composite
def garbage_record(draw: st.DrawFn, prefix: str) -> Garbage:
    kind = draw(st.sampled_from(["run", "run", "run", "cancel", "bytes"]))
    job_id = str(uuid.uuid4())
    if kind == "cancel":
        base = CancelJob(job_id=job_id, data=CancelJobData(user_id="alice")).model_dump(mode="json")
        return Garbage(
            control_topic(prefix), None, draw(mutated(CANCEL_FIELDS, base)), key_job_id=None
        )
    topic = draw(st.sampled_from([*job_topics(prefix), retry_topic(prefix)]))
    key_kind = draw(st.sampled_from(["job_id", "none", "not-utf8"]))
    key = {"job_id": job_id.encode(), "none": None, "not-utf8": b"\xff\xfe"}[key_kind]
    if kind == "bytes":
        value = draw(st.binary(max_size=64))
    else:
        base = make_job("Garbage [[sim tokens=3]]").model_copy(update={"job_id": job_id})
        value = draw(mutated(RUN_FIELDS, base.model_dump(mode="json")))
    return Garbage(topic, key, value, key_job_id=job_id if key_kind == "job_id" else None)


@dataclass
class Seen:
    """Everything the streamer published on the events and DLQ topics, as it comes."""

    dead: dict[Source, JobDeadLettered] = field(default_factory=dict)
    finals: dict[str, set[str]] = field(default_factory=dict)


async def follow(bootstrap: str, prefix: str, seen: Seen) -> None:
    consumer = AIOKafkaConsumer(
        events_topic(prefix),
        dlq_topic(prefix),
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for record in records:
                    parsed = parse_record(record.value or b"")
                    if isinstance(parsed, JobDeadLettered):
                        d = parsed.data
                        if d.source_partition is not None and d.source_offset is not None:
                            seen.dead[(d.source_topic, d.source_partition, d.source_offset)] = (
                                parsed
                            )
                    elif isinstance(parsed, LIFECYCLE_TYPES) and parsed.type in FINAL:
                        seen.finals.setdefault(parsed.job_id, set()).add(parsed.type)
    finally:
        await consumer.stop()


@pytest.fixture
async def harness(
    kafka_bootstrap: str, topic_prefix: str, start_streamer: StartStreamer
) -> AsyncIterator[tuple[StreamerService, Seen]]:
    service = await start_streamer(
        streamer_retry_base_s=0.05,
        streamer_retry_max_s=0.2,
        streamer_breaker_failures=10_000,  # garbage the upstream refuses must not open it
        streamer_max_not_before_s=3,  # a garbage retry time waits at most this long
    )
    seen = Seen()
    task = asyncio.create_task(follow(kafka_bootstrap, topic_prefix, seen))
    yield service, seen
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def runs_as_job(value: bytes) -> RunJob | None:
    try:
        parsed = parse_record(value)
    except ValidationError:
        return None
    return parsed if isinstance(parsed, RunJob) else None


def obeyable(value: bytes) -> bool:
    try:
        return isinstance(parse_record(value), CancelJob)
    except ValidationError:
        return False


def json_job_id(value: bytes) -> str | None:
    """The job id the raw JSON still says, when it is one of ours (not a mutated one)."""
    with contextlib.suppress(ValueError, RecursionError, AttributeError):
        job_id = json.loads(value).get("job_id")
        if isinstance(job_id, str) and str(uuid.UUID(job_id)) == job_id:
            return job_id
    return None


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one streamer for the whole run, on purpose
        HealthCheck.too_slow,
    ],
)
@given(data=st.data())
async def test_garbage_records_never_stop_the_streamer_and_each_is_answered(
    data: st.DataObject,
    harness: tuple[StreamerService, Seen],
    producer: AIOKafkaProducer,
    topic_prefix: str,
) -> None:
    service, seen = harness
    garbage = data.draw(st.lists(garbage_record(topic_prefix), min_size=1, max_size=6))
    good = [make_job(f"Good {uuid.uuid4()} [[sim tokens=4]]") for _ in range(2)]
    slots = data.draw(st.permutations([*garbage, *good]))
    sent: list[tuple[Garbage, Source]] = []
    for item in slots:
        if isinstance(item, RunJob):
            topic = job_topic(Priority.NORMAL, topic_prefix)
            await producer.send_and_wait(topic, item.to_bytes(), key=item.job_id.encode())
            continue
        meta = await producer.send_and_wait(item.topic, item.value, key=item.key)
        sent.append((item, (meta.topic, meta.partition, meta.offset)))

    def answered() -> bool:
        if not all(job.job_id in seen.finals for job in good):
            return False
        for item, source in sent:
            if item.topic == control_topic(topic_prefix):
                if not obeyable(item.value) and source not in seen.dead:
                    return False
                continue
            job = runs_as_job(item.value)
            ran = job is not None and job.job_id in seen.finals
            if not ran and source not in seen.dead:
                return False
            dead = seen.dead.get(source)
            if (
                dead is not None
                and dead.job_id != "unknown"
                and "job.failed" not in seen.finals.get(dead.job_id, set())
            ):
                return False
        return True

    await wait_for(answered, timeout=30, message=f"every record answered: {sent!r}")
    for job in good:
        assert seen.finals[job.job_id] == {"job.completed"}, job
    for item, source in sent:
        dead = seen.dead.get(source)
        kind = "control" if item.topic == control_topic(topic_prefix) else "job"
        event(f"{kind} record {'dead-lettered' if dead else 'run or obeyed'}")
        if dead is None:
            continue
        assert dead.data.reason, dead
        if item.topic == control_topic(topic_prefix):
            continue  # a bad cancel fails no job
        # The key names the job; failing that, the raw JSON's job_id if it can be read.
        expected = item.key_job_id or json_job_id(item.value)
        event(f"rejected job record, job id {'known' if expected else 'unknown'}")
        if expected is not None:
            assert dead.job_id == expected, (item, dead)
            assert "job.failed" in seen.finals[expected], item
    assert not any(task.done() for task in service._background._tasks), "a loop ended"
