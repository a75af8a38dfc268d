"""Preemption over the whole running system: an urgent job finding the one slot busy stops
the low job in it, which runs again as its next attempt; its client sees the restart and
the store keeps one result, the second attempt's whole answer, with both attempts billed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from deploy.localstack.stack import Stack
from tests.e2e.conftest import running_system
from tests.e2e.test_pipeline import follow, stored_result, submit
from tests.support import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]


@pytest.fixture
def system(
    kafka_bootstrap: str, database_url: str, topic_prefix: str, test_state_dir: Path
) -> Iterator[Stack]:
    with running_system(
        test_state_dir,
        kafka_bootstrap,
        database_url,
        topic_prefix=topic_prefix,
        env={"STREAMER_SLOTS": "1"},
    ) as stack:
        yield stack


async def job_status(base: str, token: str, job_id: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{base}/api/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        body: dict[str, Any] = await r.json()
        return body


async def test_an_urgent_job_preempts_a_low_one_which_completes_once_as_its_next_attempt(
    system: Stack, user_token: str
) -> None:
    urls = system.urls()
    gateway = urls["gateway"]
    low = await submit(
        gateway,
        user_token,
        prompt="A long low job. [[sim tokens=120 tps=40]]",
        job_type="analysis",
        priority="low",
        config={"model": "gpt-4o-mini", "max_tokens": 120},
    )
    following = asyncio.create_task(follow(urls["notifier_ws"], user_token, low["job_id"]))
    await wait_for(
        lambda: _running(gateway, user_token, low["job_id"]),
        timeout=30,
        message="the low job holds the slot",
    )
    await asyncio.sleep(0.5)  # it streams a while
    urgent = await submit(
        gateway,
        user_token,
        prompt="Urgent. [[sim tokens=5]]",
        job_type="analysis",
        priority="urgent",
        config={"model": "gpt-4o-mini", "max_tokens": 5},
    )

    chunks, final = await following
    assert final["event"] == "job.completed" and final["data"]["attempt"] == 2
    second = [c for c in chunks if c["attempt"] == 2]
    assert {c["attempt"] for c in chunks} == {1, 2}, "the client saw both attempts' chunks"
    assert [c["seq"] for c in second] == list(range(len(second)))

    result = await stored_result(gateway, user_token, low["job_id"])
    urgent_result = await stored_result(gateway, user_token, urgent["job_id"])
    assert urgent_result["status"] == "completed"
    assert result["status"] == "completed"
    assert result["response"] == "".join(c["text"] for c in second), "nothing lost or twice"
    assert result["usage"]["completion_tokens"] == 120
    assert [(a["attempt"], a["status"]) for a in result["attempts"]] == [
        (1, "preempted"),
        (2, "completed"),
    ]
    assert result["billed_usage"]["completion_tokens"] > 120, "the stopped attempt is billed"
    assert urgent_result["completed_at"] < result["completed_at"], "the urgent job went first"


async def _running(base: str, token: str, job_id: str) -> bool:
    return (await job_status(base, token, job_id)).get("status") == "running"
