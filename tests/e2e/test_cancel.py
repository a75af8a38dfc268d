"""Cancelling a running job through the public API: the LLM stream closes, no chunk follows."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect

from deploy.localstack.stack import Stack
from tests.e2e.test_pipeline import stored_result, submit
from tests.support import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]


async def sim_stats(simulator: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{simulator}/_sim/stats") as resp:
        stats: dict[str, Any] = await resp.json()
        return stats


async def test_cancelling_a_running_job_closes_the_llm_stream_and_no_chunk_follows(
    system: Stack, user_token: str
) -> None:
    urls = system.urls()
    base, auth = urls["gateway"], {"Authorization": f"Bearer {user_token}"}
    # 400 tokens at 20/s: about 20 s if nobody stops it.
    job_id = (await submit(base, user_token, prompt="Go on and on. [[sim tokens=400 tps=20]]"))[
        "job_id"
    ]

    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(30), connect(urls["notifier_ws"]) as ws:
        await ws.send(json.dumps({"type": "auth", "token": user_token}))
        await ws.send(json.dumps({"type": "subscribe", "channel": f"job:{job_id}", "last_seq": -1}))
        cancelled = False
        async for raw in ws:
            frame = json.loads(raw)
            frames.append(frame)
            if frame["type"] == "chunk" and not cancelled:
                cancelled = True
                async with (
                    aiohttp.ClientSession() as http,
                    http.post(f"{base}/api/v1/jobs/{job_id}/cancel", headers=auth) as resp,
                ):
                    assert resp.status == 202, await resp.text()
            if frame["type"] == "event" and frame["event"] in ("job.cancelled", "job.completed"):
                break
    final = frames[-1]
    assert final["event"] == "job.cancelled", final
    chunks = [f for f in frames if f["type"] == "chunk"]
    assert chunks, "the job streamed before it was cancelled"
    assert chunks[-1]["seq"] == final["data"]["last_seq"], "a chunk came after the cancel"

    stats = await wait_for(
        lambda: _stream_closed(urls["simulator"]),
        timeout=5,
        message="the simulator saw the streamer close the upstream stream",
    )
    assert stats["streams_completed"] == 0
    assert stats["tokens_sent"] < 400

    result = await stored_result(base, user_token, job_id)
    assert result["status"] == "cancelled"
    # Asking again is harmless and says the same.
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base}/api/v1/jobs/{job_id}/cancel", headers=auth) as resp,
    ):
        assert resp.status in (200, 202), await resp.text()
        assert (await resp.json())["status"] == "cancelled"


async def _stream_closed(simulator: str) -> dict[str, Any] | None:
    stats = await sim_stats(simulator)
    return stats if stats["streams_cancelled_by_client"] >= 1 else None
