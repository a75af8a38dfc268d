"""Chaos: the Kafka broker is killed mid-stream and comes back; no job and no chunk is lost."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from deploy.localstack.kafka import KafkaNode
from deploy.localstack.procs import free_port
from deploy.localstack.stack import Stack
from shared.auth import issue_token
from shared.kafka import ensure_topics
from tests.conftest import STATE
from tests.e2e.conftest import running_system
from tests.e2e.test_pipeline import submit
from tests.support import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]


@pytest.fixture
def own_kafka(test_state_dir: Path) -> Iterator[KafkaNode]:
    """A broker of this test's own, so killing it hurts no other test."""
    node = KafkaNode(
        test_state_dir / f"chaos-kafka-{uuid.uuid4().hex[:6]}",
        STATE / "cache",
        free_port(),
        free_port(),
    )
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def chaos_system(own_kafka: KafkaNode, database_url: str, test_state_dir: Path) -> Iterator[Stack]:
    asyncio.run(ensure_topics(own_kafka.bootstrap_servers, "streamjobs", 4))
    # Publishes give up after 3 s, so the gateway answers quickly while the broker is away.
    with running_system(
        test_state_dir,
        own_kafka.bootstrap_servers,
        database_url,
        env={"SIM_TOKENS_PER_SECOND": "200", "GATEWAY_PUBLISH_TIMEOUT_S": "3"},
    ) as stack:
        yield stack


async def get(url: str, token: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        return resp.status, await resp.json()


async def test_a_broker_killed_mid_stream_loses_no_job_and_no_chunk(
    chaos_system: Stack, own_kafka: KafkaNode, database_url: str
) -> None:
    urls = chaos_system.urls()
    base = urls["gateway"]
    token = issue_token(chaos_system.auth_secret(), "alice")
    prompt = "Keep talking. [[sim tokens=150 tps=30]]"
    job_id = (await submit(base, token, prompt=prompt))["job_id"]

    async def streaming() -> bool:
        status, body = await get(f"{base}/api/v1/jobs/{job_id}/stream", token)
        return status == 200 and body["last_seq"] >= 1

    await wait_for(streaming, timeout=20, message="the job streamed before the broker died")

    own_kafka.process.kill()  # type: ignore[union-attr]  # SIGKILL, as a crash would
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{base}/api/v1/jobs",
            json={"prompt": "while the broker is down"},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp,
    ):
        assert resp.status == 503, await resp.text()
        assert (await resp.json())["type"].endswith("/kafka-unavailable")
    await asyncio.sleep(2)
    await asyncio.to_thread(own_kafka.start)

    async def final() -> dict[str, Any] | None:
        status, body = await get(f"{base}/api/v1/jobs/{job_id}/result", token)
        return body if status == 200 else None

    result = await wait_for(
        final, timeout=90, message="the job finished after the broker came back"
    )
    assert result["status"] == "completed", result
    assert result["usage"]["completion_tokens"] == 150
    _, snapshot = await get(f"{base}/api/v1/jobs/{job_id}/stream", token)
    assert snapshot["attempt"] == result["attempt"]
    assert snapshot["text"] == result["response"]
    assert snapshot["last_seq"] + 1 == result["chunks"]

    # Every chunk of the final attempt is stored, though maybe a moment after the result.
    async def stored() -> bool:
        conn = await asyncpg.connect(database_url)
        try:
            row = await conn.fetchrow(
                """SELECT string_agg(text, '' ORDER BY seq) AS text, count(*) AS n
                   FROM chunks WHERE job_id = $1 AND attempt = $2""",
                job_id,
                result["attempt"],
            )
        finally:
            await conn.close()
        return row is not None and (row["text"], row["n"]) == (
            result["response"],
            result["chunks"],
        )

    await wait_for(
        stored, timeout=30, interval=0.2, message="a chunk of the final attempt was lost"
    )

    # And the system takes new work again.
    again = await submit(base, token, prompt="After the storm. [[sim tokens=5]]")
    later = again["job_id"]

    async def done() -> bool:
        status, body = await get(f"{base}/api/v1/jobs/{later}/result", token)
        return status == 200 and body["status"] == "completed"

    await wait_for(done, timeout=60, message="a job submitted after the outage completed")
    # The submission answered 503 during the outage never ran to completion, even if its
    # records reached the broker once it was back.
    _, page = await get(f"{base}/api/v1/jobs?status=completed", token)
    assert {j["job_id"] for j in page["items"]} == {job_id, later}
