"""One job through the whole system: REST, Kafka, streamer, LLM, PostgreSQL and WebSocket."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import openai
import pytest
from confluent_kafka import Consumer, TopicPartition
from websockets.asyncio.client import connect

from deploy.localstack.stack import Stack
from shared.jobtypes import load_job_types
from shared.topics import all_topics
from tests.support import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Summarise the benefits of event streaming. [[sim tokens=60]]"


async def submit(
    base: str, token: str, *, headers: dict[str, str] | None = None, **body: Any
) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{base}/api/v1/jobs",
            json=body,
            headers={"Authorization": f"Bearer {token}", **(headers or {})},
        ) as resp,
    ):
        payload: dict[str, Any] = await resp.json()
        assert resp.status == 202, payload
        return payload


async def follow(
    ws_url: str, token: str, job_id: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every chunk frame of the job, in arrival order, and its final event frame."""
    chunks: list[dict[str, Any]] = []
    async with asyncio.timeout(60), connect(ws_url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        await ws.send(json.dumps({"type": "subscribe", "channel": f"job:{job_id}", "last_seq": -1}))
        async for raw in ws:
            msg = json.loads(raw)
            if msg["type"] == "chunk":
                chunks.append(msg)
            elif msg["type"] == "event" and msg["event"] in (
                "job.completed",
                "job.failed",
                "job.cancelled",
            ):
                return chunks, msg
            elif msg["type"] == "error":
                raise AssertionError(f"notifier error: {msg}")
    raise AssertionError("WebSocket closed before the job finished")


async def stored_result(base: str, token: str, job_id: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{base}/api/v1/jobs/{job_id}/result", headers={"Authorization": f"Bearer {token}"}
            ) as resp,
        ):
            return await resp.json() if resp.status == 200 else None

    return await wait_for(probe, timeout=30, message=f"stored result of {job_id}")


async def upstream_usage(
    simulator: str, model: str, max_tokens: int
) -> openai.types.CompletionUsage:
    """What the LLM itself reports for the same request (the simulator is deterministic)."""
    async with openai.AsyncOpenAI(
        base_url=f"{simulator}/v1", api_key="sim", max_retries=0
    ) as client:
        completion = await client.chat.completions.create(
            model=model,
            max_tokens=max_tokens,
            messages=[
                {"role": "system", "content": load_job_types()["analysis"].system_prompt},
                {"role": "user", "content": PROMPT},
            ],
        )
    assert completion.usage is not None
    return completion.usage


async def test_job_streams_over_websocket_and_is_stored_with_its_usage(
    system: Stack, user_token: str
) -> None:
    urls = system.urls()
    accepted = await submit(
        urls["gateway"],
        user_token,
        prompt=PROMPT,
        job_type="analysis",
        priority="high",
        config={"model": "gpt-4o-mini", "max_tokens": 200},
    )
    job_id = accepted["job_id"]

    chunks, final = await follow(urls["notifier_ws"], user_token, job_id)

    assert final["event"] == "job.completed", final
    assert [c["seq"] for c in chunks] == list(range(len(chunks))), (
        "chunks out of order or with a gap"
    )
    assert {c["attempt"] for c in chunks} == {1}
    assert len(chunks) > 1, "tokens were not streamed in several chunks"
    text = "".join(c["text"] for c in chunks)

    result = await stored_result(urls["gateway"], user_token, job_id)
    assert result["status"] == "completed"
    assert result["response"] == text
    usage = await upstream_usage(urls["simulator"], "gpt-4o-mini", 200)
    assert result["usage"]["prompt_tokens"] == usage.prompt_tokens
    assert result["usage"]["completion_tokens"] == usage.completion_tokens == 60
    assert float(result["estimated_cost_usd"]) > 0


def read_all_records(bootstrap: str, topics: list[str]) -> dict[str, list[bytes]]:
    """Read every record of `topics` with librdkafka (confluent-kafka), not our client."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "e2e-independent-reader",
            "enable.auto.commit": False,
            # Transactional writes (admission) leave commit markers at offsets of their own:
            # a partition is read through once the position reaches the high watermark.
            "isolation.level": "read_committed",
        }
    )
    try:
        listed = consumer.list_topics(timeout=10).topics
        missing = [t for t in topics if t not in listed]
        assert not missing, f"topics not listed by librdkafka: {missing}"
        records: dict[str, list[bytes]] = {t: [] for t in topics}
        for topic in topics:
            for partition in listed[topic].partitions:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10
                )
                if high <= low:
                    continue
                consumer.assign([TopicPartition(topic, partition, low)])
                tp = TopicPartition(topic, partition)
                deadline = time.monotonic() + 10
                while (position := consumer.position([tp])[0].offset) < high:
                    assert time.monotonic() < deadline, (
                        f"timed out reading {topic}[{partition}] at {position} of {high}"
                    )
                    msg = consumer.poll(0.2)
                    if msg is not None:
                        assert msg.error() is None, msg.error()
                        records[topic].append(msg.value())
        return records
    finally:
        consumer.close()


async def test_independent_kafka_client_reads_records_that_match_the_published_schemas(
    system: Stack, user_token: str, kafka_bootstrap: str
) -> None:
    urls = system.urls()
    job_id = (await submit(urls["gateway"], user_token, prompt=PROMPT, priority="urgent"))["job_id"]
    _, final = await follow(urls["notifier_ws"], user_token, job_id)
    assert final["event"] == "job.completed"

    topics = all_topics(system.topic_prefix)
    records = await asyncio.to_thread(read_all_records, kafka_bootstrap, topics)

    schemas = {
        p.stem: json.loads(p.read_text()) for p in (ROOT / "docs" / "schemas").glob("*.json")
    }
    seen: set[str] = set()
    for topic, values in records.items():
        for value in values:
            record = json.loads(value)
            jsonschema.validate(record, schemas[record["type"]])
            assert record["job_id"] == job_id, f"{topic} holds a record of another job"
            seen.add(record["type"])
    assert {"job.accepted", "job.run", "job.started", "job.chunk", "job.completed"} <= seen
