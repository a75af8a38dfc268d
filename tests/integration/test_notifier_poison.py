"""Records no producer of ours would write, on both topics, never stop the notifier.

A hypothesis property: raw records whose fields are replaced by arbitrary JSON
values (escapes, NULs, lone surrogates, deep nesting, huge numbers, wrong
types), undecodable bytes and bare JSON that is not a record, interleaved with
well-formed chunks of a job someone follows. The notifier keeps reading, and
that subscriber gets every well-formed chunk in order with no gap.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from shared.contracts import (
    JobAccepted,
    JobAcceptedData,
    JobCancelled,
    JobCancelledData,
    JobCompleted,
    JobCompletedData,
    JobFailed,
    JobFailedData,
    JobStarted,
    JobStartedData,
    ModelConfig,
    TokenChunk,
    TokenChunkData,
    TokenUsage,
)
from shared.topics import Priority, chunks_topic, events_topic
from tests.integration.notifier_support import (
    Received,
    notifier_settings,
    open_ws,
    publisher,
    read_until,
    running_notifier,
    subscribe,
    token,
    ws_url,
)
from tests.integration.test_notifier_fuzz import json_values

pytestmark = pytest.mark.kafka

NOW = datetime.now(UTC)


def well_formed(job_id: str) -> list[tuple[str, dict[str, Any]]]:
    """One record of each kind for another job, as (topic kind, JSON object)."""
    records: list[tuple[str, Any]] = [
        (
            "chunks",
            TokenChunk(
                job_id=job_id,
                data=TokenChunkData(
                    attempt=1, seq=0, text="t", tokens=1, first_token_at=NOW, emitted_at=NOW
                ),
            ),
        ),
        (
            "events",
            JobAccepted(
                job_id=job_id,
                data=JobAcceptedData(
                    user_id="alice",
                    prompt="p",
                    job_type="analysis",
                    priority=Priority.NORMAL,
                    config=ModelConfig(),
                    submitted_at=NOW,
                ),
            ),
        ),
        ("events", JobStarted(job_id=job_id, data=JobStartedData(attempt=1, worker="w"))),
        (
            "events",
            JobCompleted(
                job_id=job_id,
                data=JobCompletedData(
                    attempt=1,
                    response="r",
                    model="m",
                    usage=TokenUsage(),
                    chunks=1,
                    last_seq=0,
                    duration_ms=1.0,
                ),
            ),
        ),
        (
            "events",
            JobFailed(job_id=job_id, data=JobFailedData(attempt=1, reason="x", error_type="E")),
        ),
        ("events", JobCancelled(job_id=job_id, data=JobCancelledData())),
    ]
    return [(topic, record.model_dump(mode="json")) for topic, record in records]


def paths(record: dict[str, Any]) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for key, value in record.items():
        found.append((key,))
        if isinstance(value, dict):
            found.extend((key, *sub) for sub in paths(value))
    return found


def replaced(record: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = dict(record)
    if len(path) == 1:
        out[path[0]] = value
    elif isinstance(out.get(path[0]), dict):
        out[path[0]] = replaced(out[path[0]], path[1:], value)
    return out


@st.composite
def poison(draw: st.DrawFn) -> tuple[str, bytes]:
    """A record on one of the two topics that is anything but what its schema says."""
    topic, record = draw(st.sampled_from(well_formed(draw(st.sampled_from(["x", "y", "z"])))))
    how = draw(st.sampled_from(["fields", "fields", "fields", "bytes", "nested", "bare"]))
    if how == "bytes":
        return topic, draw(st.binary(max_size=200))
    if how == "nested":
        depth = draw(st.integers(min_value=10, max_value=50_000))
        return topic, ("[" * depth + "]" * depth).encode()
    if how == "bare":
        return topic, json.dumps(draw(json_values)).encode()
    for path in draw(st.lists(st.sampled_from(paths(record)), min_size=1, max_size=4)):
        record = replaced(record, path, draw(json_values))
    # ASCII JSON: lone surrogates travel as \ud800 escapes, NULs as \u0000; NaN as NaN.
    return topic, json.dumps(record).encode()


# Hypothesis draws in a worker thread while the Kafka clients on the test's loop use `random`
# (retry jitter); it takes that for use inside a strategy. Only that warning is muted.
@pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)
async def test_poison_records_on_both_topics_never_stop_delivery_of_well_formed_chunks(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    job_id = str(uuid.uuid4())
    config = notifier_settings(kafka_bootstrap, topic_prefix, auth_secret)
    topics = {"events": events_topic(topic_prefix), "chunks": chunks_topic(topic_prefix)}
    async with (
        running_notifier(config) as service,
        publisher(kafka_bootstrap, topic_prefix) as pub,
    ):
        await pub.accepted(job_id, "alice")
        await pub.flush()
        watcher = await open_ws(ws_url(service), token(auth_secret, "alice"))
        await subscribe(watcher, job_id)
        seen = asyncio.create_task(read_until(watcher, Received(), timeout=110))
        streamed: list[str] = []
        main_loop = asyncio.get_running_loop()

        async def publish(batch: list[tuple[str, bytes]], good_after: list[int]) -> None:
            for i, (topic, value) in enumerate(batch):
                # Same keys as real records, so poison shares partitions with the good chunks.
                await pub.raw(topics[topic], value, key=job_id.encode() if i % 2 else None)
                for _ in range(good_after[i]):
                    text = f"g{len(streamed)} "
                    await pub.chunk(job_id, len(streamed), text)
                    streamed.append(text)
            await pub.flush()

        @settings(
            max_examples=60,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: the whole test stays bounded
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(batch=st.lists(poison(), min_size=1, max_size=8), data=st.data())
        def property_(batch: list[tuple[str, bytes]], data: st.DataObject) -> None:
            good_after = data.draw(
                st.lists(st.integers(0, 2), min_size=len(batch), max_size=len(batch))
            )
            asyncio.run_coroutine_threadsafe(publish(batch, good_after), main_loop).result()

        await asyncio.to_thread(property_)
        await pub.completed(job_id, streamed)
        await pub.flush()
        got = await seen
        await watcher.close()
        alive = all(not task.done() for task in service._background._tasks)

    assert streamed, "no well-formed chunk was published"
    assert got.seqs == list(range(len(streamed))), "a gap, a duplicate or a reorder"
    assert got.text == "".join(streamed)
    assert got.final is not None
    assert alive, "the reader or the sweep loop died"
