"""A structured job through streamer, simulator and results: parsed, severities counted."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from deploy.simulator.server import Simulator
from deploy.simulator.settings import SimulatorSettings
from services.streamer.app import create_service as create_streamer
from services.streamer.settings import StreamerSettings
from shared.contracts import JobAccepted, JobAcceptedData, ModelConfig, RunJob, RunJobData
from shared.jobtypes import load_job_types
from shared.kafka import publish
from shared.topics import Priority, events_topic, job_topic
from tests.integration.results_kit import Reader, running, settings_for
from tests.support import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

SEVERITIES = load_job_types()["security_analysis"].breakdown[0].values


async def submit(producer: AIOKafkaProducer, prefix: str, job_type: str, max_tokens: int) -> str:
    """What the gateway does: job.accepted on the events topic, the job on its band."""
    job_id = str(uuid.uuid4())
    spec = {
        "user_id": "alice",
        "prompt": "contract Vault { function withdraw() external { } }",
        "job_type": job_type,
        "priority": Priority.HIGH,
        "config": ModelConfig(max_tokens=max_tokens),
        "submitted_at": datetime.now(UTC),
    }
    await publish(
        producer, events_topic(prefix), JobAccepted(job_id=job_id, data=JobAcceptedData(**spec))
    )
    await publish(
        producer, job_topic(Priority.HIGH, prefix), RunJob(job_id=job_id, data=RunJobData(**spec))
    )
    return job_id


async def test_structured_job_response_is_parsed_and_severities_counted(
    kafka_bootstrap: str,
    topic_prefix: str,
    database_url: str,
    auth_secret: str,
    producer: AIOKafkaProducer,
) -> None:
    sim_settings = SimulatorSettings(port=0, ttft_ms=0, tokens_per_second=0)
    results = settings_for(kafka_bootstrap, topic_prefix, database_url, auth_secret)
    async with Simulator(sim_settings) as sim:
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
                openai_base_url=sim.base_url,
            )
        )
        await streamer.start()
        try:
            async with running(results) as service, aiohttp.ClientSession() as http:
                alice = Reader(http, f"http://127.0.0.1:{service.port}", auth_secret, "alice")
                whole = await submit(producer, topic_prefix, "security_analysis", 4000)
                cut = await submit(producer, topic_prefix, "security_analysis", 8)

                async def result(job_id: str) -> Any:
                    status, body = await alice.get(f"/jobs/{job_id}/result")
                    return body if status == 200 else None

                body = await wait_for(lambda: result(whole), timeout=30, message="no result")
                truncated = await wait_for(lambda: result(cut), timeout=30, message="no result")
        finally:
            await streamer.stop()

    parsed = body["parsed_response"]
    assert isinstance(parsed, dict) and parsed["findings"], body
    breakdown = body["severity_breakdown"]
    assert isinstance(breakdown, dict)
    assert set(breakdown) == set(SEVERITIES)
    for severity in SEVERITIES:
        assert breakdown[severity] == sum(f["severity"] == severity for f in parsed["findings"])
    assert body["parse_error"] is None
    assert body["breakdown"] == {"findings[].severity": breakdown}
    # Cut at max_tokens: not valid JSON, stored as text with the parse error noted.
    assert truncated["status"] == "completed"
    assert truncated["parsed_response"] is None
    assert truncated["finish_reason"] == "length"
    assert str(truncated["parse_error"]).startswith("not JSON")
