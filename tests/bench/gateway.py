"""Gateway submissions: throughput and latency of `POST /api/v1/jobs` against a running gateway.

Each request is one job published to Kafka (JobAccepted + RunJob, both acknowledged)
before the 202. Run it with the gateway's rate limits off (or a user allowed `requests`
jobs), or its 429s are counted as failures.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.bench.figures import Figure, percentile

BODY = {
    "prompt": "Summarise the benefits of event streaming in three sentences.",
    "job_type": "analysis",
    "priority": "normal",
    "config": {"model": "gpt-4o-mini", "max_tokens": 64},
}


async def measure(base_url: str, token: str, *, requests: int, concurrency: int) -> list[Figure]:
    url = f"{base_url.rstrip('/')}/api/v1/jobs"
    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    failures: dict[int, int] = {}
    left = requests

    async def worker(http: aiohttp.ClientSession) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            started = time.perf_counter()
            async with http.post(url, json=BODY, headers=headers) as resp:
                await resp.read()
                status = resp.status
            if status == 202:
                latencies.append(time.perf_counter() - started)
            else:
                failures[status] = failures.get(status, 0) + 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        # Warm-up: connections, the producer's metadata, the first batches.
        async with http.post(url, json=BODY, headers=headers) as resp:
            await resp.read()
        began = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began

    note = f"{requests} requests, {concurrency} concurrent, client in the same process"
    if failures:
        note += f"; non-202 answers: {failures}"
    ms = [x * 1000 for x in latencies]
    return [
        Figure(
            "gateway: job submissions per second",
            len(latencies) / elapsed,
            "jobs/s",
            ">= 1000",
            note,
        ),
        Figure("gateway: submission latency p50", percentile(ms, 50), "ms", "-"),
        Figure("gateway: submission latency p99", percentile(ms, 99), "ms", "<= 20"),
    ]
