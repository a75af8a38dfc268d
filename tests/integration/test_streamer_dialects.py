"""A job through the streamer against each simulator dialect, stored by the results service.

Real Kafka and PostgreSQL; the simulator plays servers that differ from OpenAI (no usage,
a role-only first chunk, empty `choices`, no `[DONE]`, vendor fields). Each job must
complete with the text the server sent, every token in a gap-free chunk stream, and a
usage that is the server's own or, when it sent none, counted and marked estimated.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from deploy.simulator.dialects import DIALECTS
from deploy.simulator.server import Simulator
from deploy.simulator.settings import SimulatorSettings
from services.streamer.app import create_service as create_streamer
from services.streamer.settings import StreamerSettings
from services.streamer.upstream import request_for
from shared.contracts import (
    JobAccepted,
    JobAcceptedData,
    JobCompleted,
    ModelConfig,
    RunJob,
    RunJobData,
    TokenChunk,
    parse_record,
)
from shared.jobtypes import load_job_types
from shared.kafka import publish
from shared.topics import Priority, chunks_topic, events_topic, job_topic
from tests.integration.results_kit import Reader, running, settings_for
from tests.support import read_topic, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

PROMPT = "Explain consumer groups. [[sim tokens=40]]"


@pytest.fixture(scope="module")
async def sim() -> AsyncIterator[Simulator]:
    # A token rate, so chunks are cut by the window as well as by count.
    async with Simulator(SimulatorSettings(port=0, ttft_ms=0, tokens_per_second=2000)) as server:
        yield server


def job_data() -> RunJobData:
    return RunJobData(
        user_id="alice",
        prompt=PROMPT,
        job_type="analysis",
        priority=Priority.HIGH,
        config=ModelConfig(model="gpt-4o-mini", max_tokens=200),
        submitted_at=datetime.now(UTC),
    )


async def submit(producer: AIOKafkaProducer, prefix: str, data: RunJobData) -> str:
    """What the gateway does: job.accepted on the events topic, the job on its band."""
    job_id = str(uuid.uuid4())
    accepted = JobAcceptedData(**data.model_dump(include=set(JobAcceptedData.model_fields)))
    await publish(producer, events_topic(prefix), JobAccepted(job_id=job_id, data=accepted))
    await publish(producer, job_topic(Priority.HIGH, prefix), RunJob(job_id=job_id, data=data))
    return job_id


async def server_answer(sim: Simulator, data: RunJobData) -> dict[str, Any]:
    """The same request answered whole by the plain simulator: the text and usage it streams."""
    body = {**request_for(data, load_job_types()), "stream": False}
    body.pop("stream_options")
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{sim.base_url}/chat/completions", json=body) as resp,
    ):
        assert resp.status == 200
        answer: dict[str, Any] = await resp.json()
        return answer


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
async def test_a_job_against_each_dialect_completes_with_every_token_and_honest_usage(
    dialect: str,
    sim: Simulator,
    kafka_bootstrap: str,
    topic_prefix: str,
    database_url: str,
    auth_secret: str,
    producer: AIOKafkaProducer,
) -> None:
    streamer = create_streamer(
        StreamerSettings(
            kafka_bootstrap_servers=kafka_bootstrap,
            topic_prefix=topic_prefix,
            streamjobs_auth_secret=auth_secret,
            streamer_port=0,
            streamer_group_id=f"{topic_prefix}-streamer",
            streamer_retry_group_id=f"{topic_prefix}-streamer-retry",
            streamer_session_timeout_ms=6000,
            streamer_heartbeat_interval_ms=500,
            streamer_grace_s=1,
            streamer_chunk_max_tokens=4,
            openai_base_url=f"{sim.url}/dialects/{dialect}/v1",
        )
    )
    data = job_data()
    answer = await server_answer(sim, data)
    expected_text = answer["choices"][0]["message"]["content"]
    results = settings_for(kafka_bootstrap, topic_prefix, database_url, auth_secret)
    await streamer.start()
    try:
        async with running(results) as service, aiohttp.ClientSession() as http:
            alice = Reader(http, f"http://127.0.0.1:{service.port}", auth_secret, "alice")
            job_id = await submit(producer, topic_prefix, data)

            async def result() -> Any:
                status, body = await alice.get(f"/jobs/{job_id}/result")
                return body if status == 200 else None

            stored = await wait_for(result, timeout=60, message=f"no result ({dialect})")
        estimated = streamer.registry.get_sample_value("streamjobs_streamer_usage_estimated_total")
    finally:
        await streamer.stop()

    events = [
        parse_record(v)
        for v in await read_topic(
            kafka_bootstrap,
            events_topic(topic_prefix),
            until=lambda vs: any(b'"job.completed"' in v for v in vs),
        )
    ]
    completed = next(e for e in events if isinstance(e, JobCompleted))
    assert completed.data.response == expected_text, dialect
    assert completed.data.finish_reason == "stop"  # no_done: ended, not cut
    assert completed.data.model == "gpt-4o-mini"  # Azure's empty model is no model change
    chunks = sorted(
        (
            c
            for c in map(
                parse_record,
                await read_topic(
                    kafka_bootstrap,
                    chunks_topic(topic_prefix),
                    until=lambda vs: len(vs) >= completed.data.chunks,
                ),
            )
            if isinstance(c, TokenChunk) and c.job_id == job_id
        ),
        key=lambda c: c.data.seq,
    )
    assert [c.data.seq for c in chunks] == list(range(completed.data.chunks))
    assert len(chunks) > 2
    assert "".join(c.data.text for c in chunks) == expected_text  # no token lost
    assert sum(c.data.tokens for c in chunks) == 40

    assert stored["status"] == "completed" and stored["response"] == expected_text
    usage = stored["usage"]
    if dialect == "no_usage":
        # Counted from the stream (completion) and estimated from the request (prompt).
        assert stored["usage_estimated"] is True and completed.data.usage_estimated
        assert usage["completion_tokens"] == 40
        assert usage["prompt_tokens"] > 0
        assert usage["total_tokens"] == usage["prompt_tokens"] + 40
        assert estimated == 1
    else:
        assert stored["usage_estimated"] is False
        reported = {k: v for k, v in usage.items() if v is not None}  # no cached/reasoning
        assert reported == answer["usage"]
        assert estimated == 0
