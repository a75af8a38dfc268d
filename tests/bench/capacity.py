"""Streamer capacity: tokens/s per core while its event loop lag p99 stays within 50 ms.

Ramps concurrent streams (100 tokens/s each) step by step. In each step's steady
window it reads the streamer's tokens counter and loop lag histogram from its /metrics
and its CPU seconds from /proc; the ramp stops at the first step over the lag bound
(without the lag metric, at the first step that takes 90% of a core).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

import aiohttp

from deploy.localstack.stack import Stack
from shared.kafka import publish
from shared.topics import Priority, job_topic
from tests.bench.figures import Figure, cpu_seconds, not_available
from tests.bench.pipeline import run_job, watching
from tests.bench.promtext import delta, histogram_quantile, scrape

LOOP_LAG = "streamjobs_streamer_loop_lag_seconds"
TOKENS = "streamjobs_streamer_tokens_streamed_total"
LAG_BOUND_MS = 50.0
CPU_BOUND = 0.9
TPS = 100
STEPS = (25, 50, 100, 200, 400)


@dataclass(frozen=True)
class Step:
    streams: int
    tokens_per_s: float
    cpu_share: float  # CPU seconds per wall second of the streamer process
    lag_p99_ms: float  # NaN without the metric
    unstarted: int = 0  # streams the streamer had not started within the step's start time

    @property
    def per_core(self) -> float:
        return self.tokens_per_s / self.cpu_share if self.cpu_share else math.nan

    def within(self) -> bool:
        if self.unstarted:
            return False
        if math.isnan(self.lag_p99_ms):
            return self.cpu_share < CPU_BOUND
        return self.lag_p99_ms <= LAG_BOUND_MS

    def __str__(self) -> str:
        lag = "n/a" if math.isnan(self.lag_p99_ms) else f"{self.lag_p99_ms:.0f} ms"
        late = f" ({self.unstarted} not started)" if self.unstarted else ""
        return (
            f"{self.streams} streams{late}: {self.tokens_per_s:.0f} tokens/s,"
            f" CPU {self.cpu_share:.0%}, lag p99 {lag}"
        )


async def measure(
    stack: Stack, bootstrap: str, *, window_s: float = 2.0, steps: tuple[int, ...] = STEPS
) -> list[Figure]:
    pid = stack.processes["streamer"].pid
    url = f"{stack.urls()['streamer']}/metrics"
    # Each job outlasts its step's start and window, so the window sees every stream running.
    tokens = int(TPS * (window_s + 2.0))
    done: list[Step] = []
    async with (
        watching(bootstrap, stack.topic_prefix, chunks=False) as (watch, producer),
        aiohttp.ClientSession() as http,
    ):
        has_lag = (await scrape(http, url)).has(LOOP_LAG)
        for streams in steps:
            jobs = [
                run_job(f"ramp {i} [[sim tokens={tokens} tps={TPS}]]", Priority.HIGH, tokens)
                for i in range(streams)
            ]
            ids = [j.job_id for j in jobs]
            topic = job_topic(Priority.HIGH, stack.topic_prefix)
            await asyncio.gather(*(publish(producer, topic, j) for j in jobs))
            began = await watch.started_within(ids, timeout=10)
            await asyncio.sleep(0.5)  # past the first tokens of the last to start
            first = await scrape(http, url)
            cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
            await asyncio.sleep(window_s)
            last = await scrape(http, url)
            wall = time.perf_counter() - wall0
            cpu = cpu_seconds(pid) - cpu0
            streamed = (last.value(TOKENS) or 0.0) - (first.value(TOKENS) or 0.0)
            lag = last.buckets(LOOP_LAG)
            p99 = (
                histogram_quantile(0.99, delta(first.buckets(LOOP_LAG), lag)) * 1000
                if lag is not None
                else math.nan
            )
            step = Step(streams, streamed / wall, cpu / wall, p99, len(ids) - began)
            done.append(step)
            await watch.settle(ids, stall_s=20, limit_s=60)
            if not step.within():
                break

    passing = [s for s in done if s.within()]
    ramp = "; ".join(str(s) for s in done)
    name = "streamer: tokens/s per core at loop lag p99 <= 50 ms"
    raw_name = "streamer: tokens/s at loop lag p99 <= 50 ms (highest ramp step)"
    if not has_lag:
        why = f"the streamer exposes no {LOOP_LAG}; ramp by CPU instead: {ramp}"
        return [
            not_available(name, "tokens/s", "report", why),
            not_available(raw_name, "tokens/s", "report", "as above"),
        ]
    if not passing:
        why = f"even the first step is over the bound: {ramp}"
        return [
            not_available(name, "tokens/s", "report", why),
            not_available(raw_name, "tokens/s", "report", "as above"),
        ]
    best = passing[-1]
    return [
        Figure(
            name,
            best.per_core,
            "tokens/s",
            "report",
            f"highest step within the bound, its tokens/s over the streamer's CPU share;"
            f" {TPS} tokens/s per stream, {window_s:g} s windows. Ramp: {ramp}",
        ),
        Figure(raw_name, best.tokens_per_s, "tokens/s", "report", str(best)),
    ]
