"""Graceful stop and a hard kill: no job is lost, a rerun is the next attempt."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from deploy.localstack.procs import free_port
from services.streamer.app import StreamerService
from shared.topics import chunks_topic, events_topic
from tests.integration.test_streamer_streaming import (
    FINAL,
    StartStreamer,
    events_until_final,
    fresh_sim,
    make_job,
    producer,
    read_topic,
    records_of,
    sim,
    start_streamer,
    submit,
    types_of,
)
from tests.support import wait_for

pytestmark = pytest.mark.kafka
__all__ = ["fresh_sim", "producer", "sim", "start_streamer"]  # fixtures shared with streaming

ROOT = Path(__file__).resolve().parents[2]


def of_attempt(values: list[bytes], job_id: str, attempt: int) -> list[Any]:
    return sorted(
        (c for c in records_of(values, job_id) if c.data.attempt == attempt),
        key=lambda c: c.data.seq,
    )


async def wait_started(bootstrap: str, prefix: str, job_id: str) -> None:
    await read_topic(
        bootstrap,
        chunks_topic(prefix),
        until=lambda vs: len(records_of(vs, job_id)) >= 2,
        timeout=30,
    )


async def test_stop_lets_a_short_running_job_finish_within_the_grace_period(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
) -> None:
    service = await start_streamer(streamer_grace_s=10)
    job = make_job(f"Finish me {uuid.uuid4()} [[sim tokens=40 tps=40]]")
    await submit(producer, topic_prefix, job)
    await wait_started(kafka_bootstrap, topic_prefix, job.job_id)
    await service.stop()
    events = await events_until_final(kafka_bootstrap, topic_prefix, job.job_id)
    assert events[-1].type == "job.completed"


async def test_stop_cuts_a_long_job_without_final_event_and_a_successor_reruns_it(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    start_streamer: StartStreamer,
) -> None:
    first: StreamerService = await start_streamer(streamer_grace_s=0.2)
    job = make_job(f"Long {uuid.uuid4()} [[sim tokens=300 tps=100]]")
    await submit(producer, topic_prefix, job)
    await wait_started(kafka_bootstrap, topic_prefix, job.job_id)
    await first.stop()

    await start_streamer()
    events = await events_until_final(kafka_bootstrap, topic_prefix, job.job_id)
    types = [e.type for e in events]
    assert types == ["job.started", "job.started", "job.completed"]
    completed = events[-1].data
    assert completed.attempt == 2
    values = await read_topic(
        kafka_bootstrap,
        chunks_topic(topic_prefix),
        until=lambda vs: len(of_attempt(vs, job.job_id, 2)) >= completed.chunks,
    )
    final = of_attempt(values, job.job_id, 2)
    assert [c.data.seq for c in final] == list(range(completed.chunks))
    assert "".join(c.data.text for c in final) == completed.response


async def test_kill_9_mid_stream_job_completes_on_the_other_instance_as_attempt_2(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    fresh_sim: Any,
    auth_secret: str,
) -> None:
    def spawn(name: str) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "TOPIC_PREFIX": topic_prefix,
            "STREAMJOBS_AUTH_SECRET": auth_secret,
            "OPENAI_BASE_URL": fresh_sim.base_url,
            "STREAMER_PORT": str(port),
            "STREAMER_HOST": "127.0.0.1",
            "STREAMER_GROUP_ID": f"{topic_prefix}-streamer",
            "STREAMER_RETRY_GROUP_ID": f"{topic_prefix}-streamer-retry",
            "STREAMER_SESSION_TIMEOUT_MS": "6000",
            "STREAMER_HEARTBEAT_INTERVAL_MS": "500",
            "INSTANCE_ID": name,
            "LOG_LEVEL": "WARNING",
        }
        proc = subprocess.Popen(  # a child we watch, not awaited I/O
            [sys.executable, "-m", "services.streamer"], cwd=ROOT, env=env
        )
        return proc, port

    async def ready(port: int) -> bool:
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{port}/readyz") as resp,
            ):
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    procs = {name: spawn(name) for name in ("w1", "w2")}
    try:
        for name, (_, port) in procs.items():
            await wait_for(lambda p=port: ready(p), timeout=40, message=f"{name} ready")
        job = make_job(f"Kill me {uuid.uuid4()} [[sim tokens=400 tps=100]]")
        await submit(producer, topic_prefix, job)
        values = await read_topic(
            kafka_bootstrap,
            events_topic(topic_prefix),
            until=lambda vs: "job.started" in types_of(vs, job.job_id),
        )
        worker = records_of(values, job.job_id)[0].data.worker
        await wait_started(kafka_bootstrap, topic_prefix, job.job_id)
        victim, _ = procs[worker]
        victim.send_signal(signal.SIGKILL)
        await asyncio.to_thread(victim.wait, 10)

        values = await read_topic(
            kafka_bootstrap,
            events_topic(topic_prefix),
            until=lambda vs: any(t in FINAL for t in types_of(vs, job.job_id)),
            timeout=60,
        )
        events = records_of(values, job.job_id)
        completed = events[-1]
        assert completed.type == "job.completed"
        assert completed.data.attempt == 2
        survivor = next(n for n in procs if n != worker)
        assert events[-2].type == "job.started" and events[-2].data.worker == survivor
        values = await read_topic(
            kafka_bootstrap,
            chunks_topic(topic_prefix),
            until=lambda vs: len(of_attempt(vs, job.job_id, 2)) >= completed.data.chunks,
        )
        final = of_attempt(values, job.job_id, 2)
        assert [c.data.seq for c in final] == list(range(completed.data.chunks))
        assert "".join(c.data.text for c in final) == completed.data.response
        assert sum(c.data.tokens for c in final) == 400
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in procs.values():
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 10)
