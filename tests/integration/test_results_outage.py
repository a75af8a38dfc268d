"""PostgreSQL stopped mid-run and started again: no job lost, none duplicated, /readyz honest."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from deploy.localstack.postgres import PostgresNode
from deploy.localstack.procs import free_port
from tests.integration.results_kit import (
    caught_up,
    count,
    job_script,
    publish_script,
    running,
    settings_for,
)
from tests.support import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


@pytest.fixture
async def own_postgres(server_dir: Path) -> AsyncIterator[PostgresNode]:
    """A server of this test's own, so stopping it hurts no one else."""
    node = PostgresNode(server_dir / "pg", free_port())
    await asyncio.to_thread(node.start)
    try:
        yield node
    finally:
        await asyncio.to_thread(node.stop, "immediate")


async def test_postgres_outage_loses_and_duplicates_no_job(
    kafka_bootstrap: str,
    topic_prefix: str,
    auth_secret: str,
    producer: AIOKafkaProducer,
    own_postgres: PostgresNode,
) -> None:
    dsn = own_postgres.dsn
    settings = settings_for(kafka_bootstrap, topic_prefix, dsn, auth_secret)
    before = [job_script(f"before-{i}", texts=("a", "b", "c")) for i in range(20)]
    during = [job_script(f"during-{i}", texts=("a", "b", "c")) for i in range(20)]
    async with running(settings) as service, aiohttp.ClientSession() as http:
        readyz = f"http://127.0.0.1:{service.port}/readyz"

        async def ready_status() -> int:
            async with http.get(readyz) as resp:
                return resp.status

        for script in before:
            await publish_script(producer, topic_prefix, script)
        await wait_for(lambda: caught_up(service), message="first jobs not written")
        assert await ready_status() == 200

        await asyncio.to_thread(own_postgres.stop, "immediate")  # a crash, not a clean stop
        for script in during:
            await publish_script(producer, topic_prefix, script)
        failures = service.metrics.write_failures.labels("connection")
        await wait_for(lambda: failures._value.get() >= 2, message="no write failed")
        assert await ready_status() == 503
        assert not await caught_up(service), "offsets committed while the database was down"

        await asyncio.to_thread(own_postgres.start)
        await wait_for(lambda: caught_up(service), message="jobs not written after the outage")
        assert await ready_status() == 200
        assert service.metrics.write_retries._value.get() >= 2

    jobs = 40
    assert await count(dsn, "SELECT count(*) FROM jobs") == jobs
    assert await count(dsn, "SELECT count(*) FROM jobs WHERE status = 'completed'") == jobs
    assert await count(dsn, "SELECT count(*) FROM results") == jobs
    assert await count(dsn, "SELECT count(*) FROM events") == jobs * 3
    assert await count(dsn, "SELECT count(*) FROM chunks") == jobs * 3
    texts = await count(
        dsn, "SELECT count(*) FROM results WHERE response = 'abc' AND completion_tokens = 3"
    )
    assert texts == jobs
