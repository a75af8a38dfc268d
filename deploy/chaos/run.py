"""One chaos run against a running fleet: load, rounds of kill -9 and restart, drain, count.

Each round kills the Kafka node leading the busiest chunk partition and restarts it, waits
until every partition has its replicas back in sync, then kills and restarts one instance of
each service in turn (instance `round % instances`), waiting for it to be ready. Restarts
run in threads, so the load and the followers never pause for them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from deploy.chaos.faults import busiest_partition, wait_until_whole
from deploy.chaos.figures import Figures
from deploy.chaos.follower import FINAL_EVENTS
from deploy.chaos.load import Job, Load
from deploy.localstack.fleet import ROLES, Fleet
from shared.kafka import assign_every_partition
from shared.topics import chunks_topic, events_topic, job_topics, retry_topic

FINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})


@dataclass
class ChaosOptions:
    rounds: int = 20
    rate: float = 3.0  # jobs submitted a second
    tokens: int = 300  # per job: with 100 tokens/s, streams of 3 s
    tokens_per_s: float = 100.0
    warmup_s: float = 5.0  # load before the first kill
    pause_s: float = 1.0  # between a kill and its restart: long enough to be felt
    drain_timeout_s: float = 120.0
    whole_timeout_s: float = 90.0  # for every partition to be back in sync after a restart
    ready_timeout_s: float = 180.0  # for a restarted process: a JVM on a busy box is slow


async def run_chaos(
    fleet: Fleet, options: ChaosOptions, say: Callable[[str], None] = print
) -> Figures:
    figures = Figures(rounds=options.rounds)
    started = time.monotonic()
    urls = fleet.fleet_urls()
    load = Load(
        gateways=urls["gateway"].split(","),
        notifier_ws=urls["notifier_ws"].split(","),
        auth_secret=fleet.auth_secret(),
        rate=options.rate,
        tokens=options.tokens,
        tokens_per_s=options.tokens_per_s,
    )
    stop = asyncio.Event()
    load_task = asyncio.create_task(load.run(stop))
    offsets = AIOKafkaConsumer(bootstrap_servers=fleet.bootstrap_servers)
    await offsets.start()
    try:
        await asyncio.sleep(options.warmup_s)
        before: dict[int, int] = {}
        for n in range(options.rounds):
            partition, leader, before = await busiest_partition(
                fleet.bootstrap_servers, chunks_topic(fleet.topic_prefix), offsets, before
            )
            say(f"round {n + 1}/{options.rounds}: Kafka node {leader} leads chunk partition "
                f"{partition}; {len(load.jobs)} jobs so far")  # fmt: skip
            await crash(fleet, "kafka", leader - 1, options, say)
            await wait_until_whole(fleet.bootstrap_servers, options.whole_timeout_s)
            figures.kills += 1
            for role in ROLES:
                await crash(fleet, role, n % fleet.instances, options, say)
                figures.kills += 1
            fleet.refresh_manifest()
    finally:
        stop.set()
        await load_task
        await offsets.stop()
    say(f"draining {len(load.jobs)} jobs (at most {options.drain_timeout_s:g} s)")
    await drain(fleet, load, options.drain_timeout_s, figures)
    figures.refused = load.refused
    figures.duration_s = time.monotonic() - started
    for error in load.errors[:5]:
        say(f"load: {error}")
    return figures


async def crash(
    fleet: Fleet, role: str, i: int, options: ChaosOptions, say: Callable[[str], None]
) -> None:
    """kill -9, a pause under load, restart, ready."""
    await asyncio.to_thread(fleet.kill, role, i)
    await asyncio.sleep(options.pause_s)
    started = time.monotonic()
    await asyncio.to_thread(fleet.start_process, role, i, timeout_s=options.ready_timeout_s)
    say(f"  kill -9 {role}-{i}: ready again {time.monotonic() - started:.1f} s after its restart")


async def drain(fleet: Fleet, load: Load, timeout_s: float, figures: Figures) -> None:
    """Let every follower finish, then ask the results API (through the gateway) how each
    accepted job ended, and the events topic how many final events each has."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    tasks = [job.task for job in load.jobs if job.task is not None]
    if tasks:
        await asyncio.wait(tasks, timeout=max(1.0, deadline - loop.time()))
    for task in tasks:
        task.cancel()
    statuses = await final_statuses(fleet.url("gateway", 0), load.jobs, deadline)
    finals = await count_final_events(fleet, {job.job_id for job in load.jobs})
    figures.submitted = len(load.jobs)
    for job in load.jobs:
        status, attempt = statuses.get(job.job_id, ("unknown", 0))
        figures.completed += status == "completed"
        figures.failed += status == "failed"
        figures.lost += status not in FINAL_STATUSES
        figures.jobs_rerun += attempt > 1
        figures.completed_twice += finals[job.job_id] > 1
        seqs = job.follower.seqs
        figures.gaps += seqs.gaps
        figures.duplicates += seqs.duplicates
        figures.clients_resumed += job.follower.resumes > 0
        figures.redirects += job.follower.redirects
        figures.longest_stall_s = max(figures.longest_stall_s, job.follower.longest_stall_s)
    twice = {job_id for job_id, count in finals.items() if count > 1}
    lost = {job_id for job_id, (status, _) in statuses.items() if status not in FINAL_STATUSES}
    if twice or lost:
        history = await histories(fleet, twice | lost)
        figures.twice = {job_id: history[job_id] for job_id in twice}
        figures.lost_jobs = {
            job_id: [f"results API: {statuses[job_id][0]}", *history[job_id]] for job_id in lost
        }


async def final_statuses(
    gateway: str, jobs: list[Job], deadline: float
) -> dict[str, tuple[str, int]]:
    """job id -> (status, attempt) from `GET /api/v1/jobs/{id}`, polled until final or
    `deadline`: the results service may still be catching up after its last restart."""
    loop = asyncio.get_running_loop()
    found: dict[str, tuple[str, int]] = {}
    waiting = list(jobs)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while waiting:
            still: list[Job] = []
            for job in waiting:
                view = await job_view(http, gateway, job)
                found[job.job_id] = (str(view.get("status")), int(view.get("attempt") or 0))
                if found[job.job_id][0] not in FINAL_STATUSES:
                    still.append(job)
            waiting = still
            if not waiting or loop.time() > deadline:
                break
            await asyncio.sleep(1.0)
    return found


async def job_view(http: aiohttp.ClientSession, gateway: str, job: Job) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {job.token}"}
    try:
        async with http.get(f"{gateway}/api/v1/jobs/{job.job_id}", headers=headers) as resp:
            if resp.status != 200:
                return {"status": f"HTTP {resp.status}"}
            view: dict[str, Any] = await resp.json()
            return view
    except (aiohttp.ClientError, TimeoutError) as exc:
        return {"status": f"unreachable ({type(exc).__name__})"}


async def count_final_events(fleet: Fleet, job_ids: set[str]) -> Counter[str]:
    """Final events per job on the events topic, committed ones only, read whole."""
    counts: Counter[str] = Counter()
    async for _, envelope in committed(fleet.bootstrap_servers, [events_topic(fleet.topic_prefix)]):
        job_id = envelope.get("job_id")
        if job_id in job_ids and envelope.get("type") in FINAL_EVENTS:
            counts[job_id] += 1
    return counts


async def histories(fleet: Fleet, job_ids: set[str]) -> dict[str, list[str]]:
    """Per job, one line per committed record of it on the job, retry and events topics:
    where it is, when the broker appended it, its type, attempt and streamer."""
    topics = [*job_topics(fleet.topic_prefix), retry_topic(fleet.topic_prefix)]
    topics.append(events_topic(fleet.topic_prefix))
    found: dict[str, list[tuple[int, str]]] = {job_id: [] for job_id in job_ids}
    async for record, envelope in committed(fleet.bootstrap_servers, topics):
        job_id = envelope.get("job_id")
        if job_id not in found:
            continue
        data = envelope.get("data") or {}
        line = (
            f"{record.topic}[{record.partition}]@{record.offset} {envelope.get('type')}"
            f" attempt={data.get('attempt')} worker={data.get('worker', '-')}"
            f" at={record.timestamp}"
        )
        found[job_id].append((record.timestamp, line))
    return {job_id: [line for _, line in sorted(lines)] for job_id, lines in found.items()}


async def committed(
    bootstrap: str, topics: list[str]
) -> AsyncIterator[tuple[ConsumerRecord[bytes, bytes], dict[str, Any]]]:
    """Every committed record of `topics` from the beginning to the ends when the read
    starts, with its envelope."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        tps = await assign_every_partition(consumer, topics)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    yield record, json.loads(record.value or b"{}")
    finally:
        await consumer.stop()
