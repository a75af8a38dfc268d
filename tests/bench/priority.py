"""Priority under load and overload: an urgent job sent while normal jobs wait for a slot.

Five runs. Calm runs hold every slot with slow streams (a few tokens/s each); overloaded
runs with fast ones (the streamer's CPU cannot keep up). Each run also queues normal
jobs beyond the slots, waits, then sends one urgent job and counts the run's normal jobs
that started after the urgent record was in Kafka and before the urgent job started.
A sixth run holds the slots and the backlog with low jobs instead: the urgent job stops
one of them (preemption) rather than waiting for a slot to free.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

import aiohttp
from aiokafka import AIOKafkaProducer

from deploy.localstack.stack import Stack
from shared.kafka import publish
from shared.topics import Priority, job_topic
from tests.bench.figures import Figure, cpu_seconds
from tests.bench.pipeline import Watch, run_job, watching
from tests.bench.promtext import Scrape, delta, histogram_quantile, scrape

LOOP_LAG = "streamjobs_streamer_loop_lag_seconds"
OVERLOADED = "streamjobs_streamer_overloaded"
# (name, directive of the jobs that hold the slots, tokens each, their band)
Spec = tuple[str, str, int, Priority]
CALM: Spec = ("calm", "tps=2", 8, Priority.NORMAL)
OVERLOAD: Spec = ("overloaded", "tps=100", 60, Priority.NORMAL)
PREEMPT: Spec = ("low", "tps=2", 8, Priority.LOW)
RUNS = (CALM, OVERLOAD, CALM, OVERLOAD, CALM, PREEMPT)


@dataclass
class Run:
    kind: str
    band: Priority  # of the jobs holding the slots and waiting
    waiting: int  # normal jobs of the run not started when the urgent job was sent
    overtaken: int
    start_delay_s: float  # urgent in Kafka -> urgent started
    after_free_s: float  # the first job end after it (or its arrival) -> urgent started
    signs: str  # what says whether the streamer was overloaded
    unfinished: int  # jobs of the run that had not finished when it stopped making progress

    @property
    def overloaded(self) -> bool:
        return self.signs.startswith("overloaded")


async def overload_signs(
    http: aiohttp.ClientSession, url: str, before: Scrape, cpu_share: float
) -> str:
    """Overloaded or not, by the streamer's own gauge, else its loop lag, else its CPU."""
    now = await scrape(http, url)
    gauge = now.value(OVERLOADED)
    if gauge is not None:
        return f"{'overloaded' if gauge > 0 else 'not overloaded'} ({OVERLOADED}={gauge:g})"
    lag_now = now.buckets(LOOP_LAG)
    if lag_now is not None:
        p99 = histogram_quantile(0.99, delta(before.buckets(LOOP_LAG), lag_now)) * 1000
        verdict = "overloaded" if p99 > 50 else "not overloaded"
        return f"{verdict} (loop lag p99 {p99:.0f} ms)"
    verdict = "overloaded" if cpu_share >= 0.9 else "not overloaded"
    return f"{verdict} (streamer CPU {cpu_share:.0%} of a core; no gauge or loop lag metric)"


async def one_run(
    stack: Stack,
    watch: Watch,
    producer: AIOKafkaProducer,
    http: aiohttp.ClientSession,
    spec: Spec,
    *,
    slots: int,
    backlog: int,
) -> Run:
    kind, directive, tokens, band = spec
    prefix, pid = stack.topic_prefix, stack.processes["streamer"].pid
    metrics_url = f"{stack.urls()['streamer']}/metrics"
    before = await scrape(http, metrics_url)
    jobs = [
        run_job(f"{kind} {i} [[sim tokens={tokens} {directive}]]", band, tokens)
        for i in range(slots + backlog)
    ]
    ids = [j.job_id for j in jobs]
    await asyncio.gather(*(publish(producer, job_topic(band, prefix), j) for j in jobs))
    await asyncio.sleep(0.5)  # the streamer fills its slots; the rest wait
    cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
    await asyncio.sleep(1.0)
    cpu_share = (cpu_seconds(pid) - cpu0) / (time.perf_counter() - wall0)
    waiting = len(ids) - sum(j in watch.started for j in ids)
    urgent = run_job("urgent [[sim tokens=5]]", Priority.URGENT, 5)
    await publish(producer, job_topic(Priority.URGENT, prefix), urgent)
    in_kafka = time.time()
    await watch.started_within([urgent.job_id], timeout=60)
    signs = await overload_signs(http, metrics_url, before, cpu_share)
    # An urgent job that never starts counts every normal job started meanwhile.
    started = watch.started.get(urgent.job_id, math.inf)
    if math.isinf(started):
        signs += ", the urgent job did not start within 60 s"
    unfinished = await watch.settle([*ids, urgent.job_id], stall_s=20, limit_s=90)
    freed = min((t for t in watch.finished.values() if in_kafka < t < started), default=in_kafka)
    return Run(
        kind=kind,
        band=band,
        waiting=waiting,
        overtaken=sum(in_kafka < watch.started.get(j, math.inf) < started for j in ids),
        start_delay_s=max(0.0, min(started, time.time()) - in_kafka),
        after_free_s=max(0.0, min(started, time.time()) - freed),
        signs=signs,
        unfinished=unfinished,
    )


async def measure(stack: Stack, bootstrap: str, *, slots: int, backlog: int = 100) -> list[Figure]:
    runs: list[Run] = []
    async with (
        watching(bootstrap, stack.topic_prefix, chunks=False) as (watch, producer),
        aiohttp.ClientSession() as http,
    ):
        for spec in RUNS:
            runs.append(
                await one_run(stack, watch, producer, http, spec, slots=slots, backlog=backlog)
            )
    preempting = [r for r in runs if r.band is Priority.LOW]
    runs = [r for r in runs if r.band is Priority.NORMAL]
    worst = max(runs, key=lambda r: r.overtaken)
    overloaded = [i + 1 for i, r in enumerate(runs) if r.overloaded]
    detail = "; ".join(
        f"run {i + 1} {r.kind} slots: {r.overtaken} ahead, {r.waiting} waiting, {r.signs}"
        + (f", {r.unfinished} jobs never finished" if r.unfinished else "")
        for i, r in enumerate(runs)
    )
    return [
        Figure(
            "streamer: normal jobs started ahead of the waiting urgent job",
            float(worst.overtaken),
            "jobs",
            "<= 0",
            f"max over {len(runs)} runs (overloaded: runs {overloaded or 'none'}), each with"
            f" {slots} slots held and {backlog} more normal jobs queued; counted from the"
            f" urgent record's ack by Kafka to its job.started. {detail}",
        ),
        Figure(
            "streamer: urgent job start after the first slot freed",
            max(r.after_free_s for r in runs) * 1000,
            "ms",
            "<= 1000",
            "worst of the runs: from the first job end after the urgent record reached Kafka"
            " (or that arrival, when a slot was free) to the urgent job.started",
        ),
        Figure(
            "streamer: urgent job start delay under a normal backlog",
            max(r.start_delay_s for r in runs) * 1000,
            "ms",
            "-",
            "worst of the runs: urgent record in Kafka -> job.started; the rest of the delay"
            " is waiting for a running job to finish",
        ),
        *(
            Figure(
                "streamer: urgent job start delay, every slot held by low jobs (preemption)",
                r.start_delay_s * 1000,
                "ms",
                "<= 1000",
                f"urgent record in Kafka -> job.started, {slots} low jobs streaming in the slots"
                f" and {backlog} more waiting: it stops the youngest instead of waiting for one"
                f" to finish; {r.overtaken} low jobs started ahead of it, {r.signs}"
                + (f", {r.unfinished} jobs never finished" if r.unfinished else ""),
            )
            for r in preempting
        ),
    ]
