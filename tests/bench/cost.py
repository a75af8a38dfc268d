"""What one job costs the whole stack at a moderate rate, and which process spends it.

Jobs are submitted through the gateway on a fixed schedule (open loop), each a short
stream, and every one is followed to its final event. The CPU every process of the stack
used over that window (Kafka, PostgreSQL and its backends, the simulator, the four
services) is read from /proc, less what the same processes use idle over as long, and
divided by the jobs completed. At a rate this low nothing batches: every record is its
own produce request and most fetches return one record, so this is where per-record
overheads (requests, transactions, consumers per record) show. The bench's own reader of
the events is paced, so it adds little to Kafka's share.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp

from tests.bench.figures import Figure, percentile
from tests.bench.pipeline import Watch

BODY = {
    "job_type": "analysis",
    "priority": "normal",
    "config": {"model": "gpt-4o-mini", "max_tokens": 16},
}
IDLE_S = 3.0


def tree_cpu(roots: Mapping[int, str]) -> dict[str, float]:
    """CPU seconds (user + system, reaped children included) of each root process and every
    process below it, summed under the root's name (a process counts for its nearest root)."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    used: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # gone while we looked
            continue
        pid = int(entry.name)
        parent[pid] = int(fields[1])
        used[pid] = sum(int(f) for f in fields[11:15]) / tick  # utime stime cutime cstime
    totals = dict.fromkeys(roots.values(), 0.0)
    for pid, cpu in used.items():
        up = pid
        while up not in roots and up in parent:
            up = parent[up]
        if up in roots:
            totals[roots[up]] += cpu
    return totals


def _spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after.get(name, 0.0) - before.get(name, 0.0) for name in after}


async def measure(
    gateway_url: str,
    tokens: list[str],
    bootstrap: str,
    prefix: str,
    roots: Mapping[int, str],
    *,
    rate: float = 50.0,
    seconds: float = 6.0,
    job_tokens: int = 5,
) -> list[Figure]:
    url = f"{gateway_url.rstrip('/')}/api/v1/jobs"
    users = [{"Authorization": f"Bearer {token}"} for token in tokens]
    watch = Watch(bootstrap, prefix, chunks=False, paced=True)
    await watch.start()
    job_ids: list[str] = []
    submits: list[float] = []  # ms from each submission's due time to its 202
    refused: dict[int, int] = {}
    try:
        async with aiohttp.ClientSession() as http:
            # Warm-up: each user's token verified, connections open, producers' metadata.
            for i, headers in enumerate(users):
                await _submit(http, url, headers, f"cost warm-up {i}", job_tokens)
            await asyncio.sleep(1.0)

            idle0, idle_began = tree_cpu(roots), time.perf_counter()
            await asyncio.sleep(IDLE_S)
            idle = _spent(idle0, tree_cpu(roots))
            idle_s = time.perf_counter() - idle_began

            loop = asyncio.get_running_loop()
            before, began = tree_cpu(roots), time.perf_counter()
            start = loop.time() + 0.05

            async def one(i: int) -> None:
                due = start + i / rate
                await asyncio.sleep(max(0.0, due - loop.time()))
                status, job_id = await _submit(
                    http, url, users[i % len(users)], f"cost {i}", job_tokens
                )
                if job_id is not None:
                    job_ids.append(job_id)
                    submits.append((loop.time() - due) * 1000)
                else:
                    refused[status] = refused.get(status, 0) + 1

            await asyncio.gather(*(one(i) for i in range(int(rate * seconds))))
            unfinished = await watch.settle(job_ids, stall_s=10.0, limit_s=60.0)
            await asyncio.sleep(0.5)  # the last results written, the last frames sent
            spent = _spent(before, tree_cpu(roots))
            window = time.perf_counter() - began
    finally:
        await watch.stop()

    completed = len(job_ids) - unfinished
    if not completed:
        return []
    per_job = {
        name: max(0.0, cpu - idle.get(name, 0.0) * window / idle_s) / completed * 1000
        for name, cpu in spent.items()
    }
    parts = ", ".join(
        f"{name} {ms:.1f}" for name, ms in sorted(per_job.items(), key=lambda kv: -kv[1]) if ms
    )
    note = (
        f"{completed} jobs of {job_tokens} tokens at {rate:g}/s offered through the gateway,"
        f" each followed to its end (submit p50 {percentile(submits, 50):.0f} ms, p99"
        f" {percentile(submits, 99):.0f} ms); less idle use ({sum(idle.values()) / idle_s:.2f}"
        f" cores); ms per job: {parts}"
    )
    if refused or unfinished:
        note += f"; refused {refused}, unfinished {unfinished}"
    total = sum(per_job.values())
    return [
        Figure(f"whole stack: CPU per job at {rate:g} jobs/s", total, "ms", "report", note),
        Figure(
            f"whole stack: Kafka's share of the CPU per job at {rate:g} jobs/s",
            per_job.get("kafka", math.nan),
            "ms",
            "report",
        ),
        Figure(
            f"whole stack: cores busy at {rate:g} jobs/s",
            sum(spent.values()) / window,
            "cores",
            "report",
            f"over {window:.1f} s, idle use included",
        ),
    ]


async def _submit(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], text: str, tokens: int
) -> tuple[int, str | None]:
    body = {**BODY, "prompt": f"{text} [[sim tokens={tokens}]]"}
    async with http.post(url, json=body, headers=headers) as resp:
        answer = await resp.json(content_type=None)
        return resp.status, answer.get("job_id") if resp.status == 202 else None
