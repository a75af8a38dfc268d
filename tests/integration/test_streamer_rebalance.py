"""Streamers joining, leaving on SIGTERM and killed under load: partitions move, no job is
lost, no two attempts of one job overlap, every job completes once, and a join reruns only
the jobs of the partitions that moved."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from deploy.localstack.procs import free_port
from shared.contracts import JobCompleted, JobStarted, TokenChunk
from shared.routing import chunk_partition
from shared.topics import Priority, chunks_topic, events_topic, job_topic
from tests.integration.test_streamer_streaming import (
    StartStreamer,
    fresh_sim,
    make_job,
    read_topic,
    records_of,
    sim,
    start_streamer,
    submit,
)
from tests.support import wait_for

pytestmark = pytest.mark.kafka
__all__ = ["fresh_sim", "sim", "start_streamer"]  # fixtures shared with streaming

ROOT = Path(__file__).resolve().parents[2]
JOBS = 16
FINAL_TYPES = ("job.completed", "job.failed", "job.cancelled")


@dataclass
class Fleet:
    """Streamer processes of one group on the suite's broker, by instance name."""

    env: dict[str, str]
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = field(default_factory=dict)

    def spawn(self, name: str) -> int:
        port = free_port()
        env = {**os.environ, **self.env, "STREAMER_PORT": str(port), "INSTANCE_ID": name}
        proc = subprocess.Popen([sys.executable, "-m", "services.streamer"], cwd=ROOT, env=env)
        self.procs[name] = (proc, port)
        return port

    async def start(self, name: str) -> None:
        port = self.spawn(name)
        await wait_for(lambda: self.ready(port), timeout=60, message=f"{name} ready")

    async def ready(self, port: int) -> bool:
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{port}/readyz") as resp,
            ):
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    async def signal(self, name: str, sig: signal.Signals) -> int:
        proc, _ = self.procs[name]
        proc.send_signal(sig)
        return await asyncio.to_thread(proc.wait, 60)

    async def stop_all(self) -> None:
        for proc, _ in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.procs.values():
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 10)


@pytest.fixture
async def fleet(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str, fresh_sim: Any
) -> AsyncIterator[Fleet]:
    fleet = Fleet(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "TOPIC_PREFIX": topic_prefix,
            "STREAMJOBS_AUTH_SECRET": auth_secret,
            "OPENAI_BASE_URL": fresh_sim.base_url,
            "STREAMER_HOST": "127.0.0.1",
            "STREAMER_GROUP_ID": f"{topic_prefix}-streamer",
            "STREAMER_RETRY_GROUP_ID": f"{topic_prefix}-streamer-retry",
            "STREAMER_SESSION_TIMEOUT_MS": "6000",
            "STREAMER_HEARTBEAT_INTERVAL_MS": "500",
            "STREAMER_GRACE_S": "0.5",
            "LOG_LEVEL": "WARNING",
        }
    )
    try:
        yield fleet
    finally:
        await fleet.stop_all()


async def submit_load(producer: AIOKafkaProducer, prefix: str, *, seconds: int = 4) -> list[str]:
    """Jobs streaming for `seconds` each, spread over the job topic's partitions."""
    directive = f"[[sim tokens={seconds * 20} tps=20]]"
    jobs = [make_job(f"Load {uuid.uuid4()} {directive}") for _ in range(JOBS)]
    for job in jobs:
        await submit(producer, prefix, job)
    return [job.job_id for job in jobs]


async def events_when(
    bootstrap: str, prefix: str, until: Callable[[list[Any]], bool], timeout: float = 60
) -> list[Any]:
    values = await read_topic(
        bootstrap, events_topic(prefix), until=lambda vs: until(records_of(vs)), timeout=timeout
    )
    return records_of(values)


def started_by(events: list[Any], worker: str) -> set[str]:
    return {e.job_id for e in events if isinstance(e, JobStarted) and e.data.worker == worker}


def worker_of(events: list[Any], job_id: str, attempt: int) -> str:
    return next(
        e.data.worker
        for e in events
        if isinstance(e, JobStarted) and e.job_id == job_id and e.data.attempt == attempt
    )


def all_final(job_ids: list[str]) -> Callable[[list[Any]], bool]:
    wanted = set(job_ids)
    return lambda events: wanted <= {e.job_id for e in events if e.type in FINAL_TYPES}


async def check_every_job_ran_once_at_a_time(
    bootstrap: str, prefix: str, job_ids: list[str]
) -> dict[str, JobCompleted]:
    """Each job completed once, each attempt is one run, no attempt overlaps another."""
    until_final = all_final(job_ids)
    read = await events_when(bootstrap, prefix, until_final, timeout=75)
    events = [e for e in read if e.job_id in job_ids]
    finals = [e for e in events if e.type in FINAL_TYPES]
    assert sorted(e.job_id for e in finals) == sorted(job_ids), "a job lost or ended twice"
    completed = {e.job_id: e for e in finals if isinstance(e, JobCompleted)}
    assert set(completed) == set(job_ids), [e.type for e in finals if e.job_id not in completed]
    wanted = sum(c.data.chunks for c in completed.values())

    def final_chunks(values: list[bytes]) -> int:
        return sum(
            1
            for c in records_of(values)
            if c.job_id in completed and c.data.attempt == completed[c.job_id].data.attempt
        )

    values = await read_topic(
        bootstrap, chunks_topic(prefix), until=lambda vs: final_chunks(vs) >= wanted, timeout=30
    )
    runs: dict[tuple[str, int], list[TokenChunk]] = defaultdict(list)
    for chunk in records_of(values):
        if chunk.job_id in completed:
            runs[chunk.job_id, chunk.data.attempt].append(chunk)
    span: dict[str, list[tuple[int, datetime, datetime]]] = defaultdict(list)
    for (job_id, attempt), chunks in runs.items():
        seqs = [c.data.seq for c in chunks]
        assert len(seqs) == len(set(seqs)), f"{job_id} attempt {attempt} streamed twice"
        times = [c.data.emitted_at for c in chunks]
        span[job_id].append((attempt, min(times), max(times)))
    for job_id, done in completed.items():
        final = sorted(runs[job_id, done.data.attempt], key=lambda c: c.data.seq)
        assert [c.data.seq for c in final] == list(range(done.data.chunks))
        assert "".join(c.data.text for c in final) == done.data.response
        attempts = sorted(span[job_id])
        for (a, _, last), (b, first, _) in itertools.pairwise(attempts):
            assert last < first, f"{job_id}: attempt {a} still streamed after {b} began"
        started = sorted(
            e.data.attempt for e in events if e.job_id == job_id and isinstance(e, JobStarted)
        )
        assert len(started) == len(set(started)), f"{job_id}: an attempt number was reused"
        assert started[-1] == done.data.attempt
    return completed


async def two_streamers_under_load(
    fleet: Fleet, producer: AIOKafkaProducer, bootstrap: str, prefix: str
) -> list[str]:
    """Streamers w1 and w2 of one group, both running some of the load's jobs."""
    await asyncio.gather(fleet.start("w1"), fleet.start("w2"))
    job_ids = await submit_load(producer, prefix)
    await events_when(
        bootstrap, prefix, lambda es: bool(started_by(es, "w1") and started_by(es, "w2"))
    )
    return job_ids


async def test_a_second_streamer_joining_under_load_reruns_only_the_jobs_of_moved_partitions(
    kafka_bootstrap: str,
    topic_prefix: str,
    producer: AIOKafkaProducer,
    fleet: Fleet,
    start_streamer: StartStreamer,
) -> None:
    fleet.env["STREAMER_STICKY_ASSIGNMENT"] = "true"
    await fleet.start("w1")
    job_ids = await submit_load(producer, topic_prefix, seconds=12)
    await events_when(
        kafka_bootstrap, topic_prefix, lambda es: len(started_by(es, "w1")) >= JOBS // 2
    )
    # In this process, so that it joins within seconds on a loaded machine.
    await start_streamer(instance_id="w2", streamer_grace_s=0.5, streamer_sticky_assignment=True)
    completed = await check_every_job_ran_once_at_a_time(kafka_bootstrap, topic_prefix, job_ids)
    events = await events_when(kafka_bootstrap, topic_prefix, all_final(job_ids))
    partitions = len(await producer.partitions_for(job_topic(Priority.NORMAL, topic_prefix)))
    partition = {job_id: chunk_partition(job_id, partitions) for job_id in job_ids}
    moved = {partition[j] for j, done in completed.items() if worker_of_final(events, done) == "w2"}
    assert moved, "the joining streamer took no partition with jobs"
    assert len(moved) <= partitions // 2, f"more than the joiner's share moved: {moved}"
    for job_id, done in completed.items():
        if partition[job_id] not in moved:
            assert done.data.attempt == 1, f"{job_id} of a kept partition was rerun"
            assert worker_of_final(events, done) == "w1"
    assert any(c.data.attempt > 1 for c in completed.values()), "no job was moved mid-stream"


def worker_of_final(events: list[Any], done: JobCompleted) -> str:
    return worker_of(events, done.job_id, done.data.attempt)


async def test_a_streamer_leaving_on_sigterm_under_load_hands_its_jobs_over_without_overlap(
    kafka_bootstrap: str, topic_prefix: str, producer: AIOKafkaProducer, fleet: Fleet
) -> None:
    job_ids = await two_streamers_under_load(fleet, producer, kafka_bootstrap, topic_prefix)
    assert await fleet.signal("w2", signal.SIGTERM) == 0
    completed = await check_every_job_ran_once_at_a_time(kafka_bootstrap, topic_prefix, job_ids)
    events = await events_when(kafka_bootstrap, topic_prefix, all_final(job_ids))
    moved = [j for j in started_by(events, "w2") if completed[j].data.attempt > 1]
    assert moved, "the SIGTERM cut no running job short"
    for job_id in moved:
        assert worker_of(events, job_id, completed[job_id].data.attempt) == "w1"


async def test_a_killed_streamer_jobs_rerun_as_new_attempts_after_its_eviction(
    kafka_bootstrap: str, topic_prefix: str, producer: AIOKafkaProducer, fleet: Fleet
) -> None:
    job_ids = await two_streamers_under_load(fleet, producer, kafka_bootstrap, topic_prefix)
    assert await fleet.signal("w2", signal.SIGKILL) == -signal.SIGKILL
    killed_at = time.time()
    completed = await check_every_job_ran_once_at_a_time(kafka_bootstrap, topic_prefix, job_ids)
    events = await events_when(kafka_bootstrap, topic_prefix, all_final(job_ids))
    cut = [
        job_id
        for job_id in started_by(events, "w2")
        if not any(
            e.job_id == job_id and e.type in FINAL_TYPES and e.occurred_at.timestamp() < killed_at
            for e in events
        )
    ]
    assert cut, "the kill hit no running job"
    for job_id in cut:
        attempt = completed[job_id].data.attempt
        assert attempt >= 2, f"{job_id} reran under its old attempt"
        assert worker_of(events, job_id, attempt) == "w1"
