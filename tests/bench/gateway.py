"""Gateway submissions: throughput and latency of `POST /api/v1/jobs` against a running gateway.

Run with the whole stack up: the results service persists every accepted job and the
notifier follows the events while the streamer streams the first jobs slowly and leaves
the rest queued in Kafka (the jobs' prompt asks the simulator for 20 tokens at 10/s).

Each request goes through exact admission before the 202: an admission request to the
owner of the user's partition, its decision, JobAccepted and RunJob committed in one
transaction, the decision read back. One user's submissions are decided one transaction
after another by the owner of its partition; the load is spread over many users, as real
traffic is, so that every admission partition works. Run it with the gateway's rate limits
off (or users allowed `requests` jobs), or their 429s are counted as failures.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Mapping

import aiohttp

from tests.bench.cost import tree_cpu
from tests.bench.figures import Figure, cpu_seconds, percentile
from tests.bench.promtext import Scrape, scrape

# Requests decided per owner transaction, from the gateway's own histogram.
TRANSACTION_REQUESTS = "streamjobs_gateway_admission_transaction_requests"

# Offered rates below the 1,000/s step, each for 2 s: how the latency of exact admission
# grows with the load, on a machine that also runs the whole stack.
RAMP_RATES = (50.0, 100.0, 200.0, 400.0)
RAMP_BOUND_MS = 20.0

BODY = {
    "prompt": "Summarise the benefits of event streaming. [[sim tokens=20 tps=10]]",
    "job_type": "analysis",
    "priority": "normal",
    "config": {"model": "gpt-4o-mini", "max_tokens": 64},
}


async def measure(
    base_url: str,
    tokens: list[str],
    *,
    stack_note: str = "",
    pid: int | None = None,
    roots: Mapping[int, str] | None = None,
    requests: int,
    concurrency: int,
    paced_rate: float = 1000.0,
    paced_seconds: float = 5.0,
) -> list[Figure]:
    url = f"{base_url.rstrip('/')}/api/v1/jobs"
    users = [{"Authorization": f"Bearer {token}"} for token in tokens]
    latencies: list[float] = []
    failures: dict[int, int] = {}
    left = requests

    async def worker(http: aiohttp.ClientSession) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            headers = users[left % len(users)]
            started = time.perf_counter()
            async with http.post(url, json=BODY, headers=headers) as resp:
                await resp.read()
                status = resp.status
            if status == 202:
                latencies.append(time.perf_counter() - started)
            else:
                failures[status] = failures.get(status, 0) + 1

    connector = aiohttp.TCPConnector(limit=max(concurrency, 256))
    async with aiohttp.ClientSession(connector=connector) as http:
        # Warm-up: connections, the producer's metadata, the first batches.
        for headers in users:
            async with http.post(url, json=BODY, headers=headers) as resp:
                await resp.read()
        metrics = f"{base_url.rstrip('/')}/metrics"
        before = await scrape(http, metrics)
        # The client shares the box too: it is counted, under its own name.
        counted = {**roots, os.getpid(): "bench client"} if roots else {}
        cpu0, stack0 = _cpu(pid), tree_cpu(counted)
        began = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
        closed_cpu = _cpu(pid) - cpu0
        stack_cpu = {n: cpu - stack0.get(n, 0.0) for n, cpu in tree_cpu(counted).items()}
        closed_done = len(latencies)

        # Below saturation first: the latency of exact admission itself, step by step.
        ramp = [
            (rate, [x * 1000 for x in await _paced(http, url, users, rate=rate, seconds=2.0)])
            for rate in RAMP_RATES
        ]
        paced_before = await scrape(http, metrics)
        cpu0 = _cpu(pid)
        paced = await _paced(http, url, users, rate=paced_rate, seconds=paced_seconds)
        paced_cpu = _cpu(pid) - cpu0
        paced_after = await scrape(http, metrics)

    note = f"{requests} requests, {concurrency} concurrent, spread over {len(users)} users"
    if failures:
        note += f"; non-202 answers: {failures}"
    ms = [x * 1000 for x in latencies]
    paced_ms = [x * 1000 for x in paced]
    paced_note = (
        f"{len(paced)} requests sent on a fixed schedule over {len(users)} users, latency from"
        " each one's due time"
    )
    within = [rate for rate, step in ramp if step and percentile(step, 99) <= RAMP_BOUND_MS]
    steps = "; ".join(
        f"{rate:g}/s: p50 {percentile(step, 50):.1f} ms, p99 {percentile(step, 99):.1f} ms"
        for rate, step in ramp
    )
    return [
        Figure(
            f"gateway (admission exact): highest offered rate with p99 <= {RAMP_BOUND_MS:g} ms",
            max(within, default=0.0),
            "jobs/s",
            "report",
            f"2 s at each offered rate, open loop, whole stack running (0: none within). {steps}",
        ),
        Figure(
            "gateway (admission exact): submissions per admission transaction (closed loop)",
            _per_transaction(before, paced_before),
            "requests",
            "-",
            f"{concurrency} concurrent: at most that many can share one transaction",
        ),
        Figure(
            f"gateway (admission exact): submissions per admission transaction at"
            f" {paced_rate:g}/s offered",
            _per_transaction(paced_before, paced_after),
            "requests",
            "-",
        ),
        Figure(
            "gateway (admission exact): job submissions per second (closed loop)",
            len(latencies) / elapsed,
            "jobs/s",
            ">= 5000",
            note,
        ),
        Figure("gateway (admission exact): closed-loop latency p99", percentile(ms, 99), "ms", "-"),
        Figure(
            "gateway (admission exact): CPU per submission (closed loop)",
            closed_cpu / closed_done * 1e6 if closed_done else math.nan,
            "us",
            "-",
            "the gateway process's user + system CPU over the requests it answered 202;"
            " 5,000/s on one core needs <= 200 us",
        ),
        *_stack_figures(stack_cpu, closed_done, elapsed),
        Figure(
            f"gateway (admission exact): CPU per submission at {paced_rate:g}/s offered",
            paced_cpu / len(paced) * 1e6 if paced else math.nan,
            "us",
            "-",
        ),
        Figure(
            f"gateway (admission exact): latency p50 at {paced_rate:g} submissions/s offered",
            percentile(paced_ms, 50),
            "ms",
            "-",
            paced_note,
        ),
        Figure(
            f"gateway (admission exact): latency p99 at {paced_rate:g} submissions/s offered",
            percentile(paced_ms, 99),
            "ms",
            "<= 10",
            stack_note,
        ),
    ]


def _stack_figures(spent: dict[str, float], done: int, elapsed: float) -> list[Figure]:
    """What the closed loop cost the whole box: the gateway's rate is bounded by the cores
    every process shares, the broker's above all."""
    if not spent or not done or elapsed <= 0:
        return []
    parts = ", ".join(
        f"{name} {cpu / done * 1e6:.0f}"
        for name, cpu in sorted(spent.items(), key=lambda kv: -kv[1])
    )
    return [
        Figure(
            "gateway (admission exact): whole-stack CPU per submission (closed loop)",
            sum(spent.values()) / done * 1e6,
            "us",
            "report",
            "every process of the stack, the broker, PostgreSQL and the bench client, over"
            " the closed loop;"
            f" {sum(spent.values()) / elapsed:.2f} cores busy; us per submission: {parts}",
        )
    ]


def _cpu(pid: int | None) -> float:
    return cpu_seconds(pid) if pid is not None else math.nan


def _per_transaction(before: Scrape, after: Scrape) -> float:
    """Requests decided per owner transaction between two scrapes (NaN: none, or no metric)."""
    counts = [s.value(f"{TRANSACTION_REQUESTS}_count") for s in (before, after)]
    sums = [s.value(f"{TRANSACTION_REQUESTS}_sum") for s in (before, after)]
    if None in counts or None in sums:
        return math.nan
    transactions = (counts[1] or 0.0) - (counts[0] or 0.0)
    requests = (sums[1] or 0.0) - (sums[0] or 0.0)
    return requests / transactions if transactions > 0 else math.nan


async def _paced(
    http: aiohttp.ClientSession,
    url: str,
    users: list[dict[str, str]],
    *,
    rate: float,
    seconds: float,
) -> list[float]:
    """Open loop: requests leave at `rate` whatever the answers do; no coordinated omission."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    begin = loop.time() + 0.05

    async def one(due: float, headers: dict[str, str]) -> None:
        await asyncio.sleep(max(0.0, due - loop.time()))
        async with http.post(url, json=BODY, headers=headers) as resp:
            await resp.read()
            if resp.status == 202:
                latencies.append(loop.time() - due)

    count = int(rate * seconds)
    await asyncio.gather(*(one(begin + i / rate, users[i % len(users)]) for i in range(count)))
    return latencies
