"""Admission across the fleet's two gateways is exact: one user's burst over both accepts
exactly the in-flight limit, and one Idempotency-Key sent to both at once is one job with
one `job.run` on the job topics."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from typing import Any

import aiohttp
import pytest

from shared.topics import job_topics
from tests.fleet.conftest import FLEET_LIMITS, RunningFleet, committed_records

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.postgres,
    pytest.mark.e2e,
    pytest.mark.timeout(120, func_only=True),
]

IN_FLIGHT = int(FLEET_LIMITS["GATEWAY_MAX_IN_FLIGHT"])


def long_job(note: str) -> dict[str, Any]:
    """A job that streams for about a minute: the accepted ones stay in flight through the
    burst (they are cancelled at the end)."""
    return {
        "prompt": f"Stay a while ({note}). [[sim tokens=1200 tps=20]]",
        "job_type": "analysis",
        "priority": "normal",
        "config": {"model": "gpt-4o-mini", "max_tokens": 1200},
    }


async def submit(
    http: aiohttp.ClientSession, gateway: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{gateway}/api/v1/jobs", json=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def cancel_all(http: aiohttp.ClientSession, gateway: str, job_ids: list[str]) -> None:
    for job_id in job_ids:
        async with http.post(f"{gateway}/api/v1/jobs/{job_id}/cancel") as resp:
            assert resp.status < 300, await resp.text()


async def test_a_burst_of_one_user_over_both_gateways_accepts_exactly_the_in_flight_limit(
    fleet: RunningFleet,
) -> None:
    headers = {"Authorization": f"Bearer {fleet.token(f'burst-{uuid.uuid4().hex[:8]}')}"}
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=0)  # all 200 at once, not 100 and then 100
    async with aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector) as http:
        answers = await asyncio.gather(
            *(submit(http, fleet.gateways[n % 2], long_job(f"burst {n}"), {}) for n in range(200))
        )
        accepted = [payload["job_id"] for status, payload in answers if status == 202]
        try:
            statuses = Counter(status for status, _ in answers)
            assert set(statuses) <= {202, 429}, statuses
            assert len(accepted) == IN_FLIGHT, statuses
            refused = [payload for status, payload in answers if status == 429]
            assert all("flight" in json.dumps(p).lower() for p in refused), refused[:3]
        finally:
            await cancel_all(http, fleet.gateways[0], accepted)


async def test_one_idempotency_key_sent_to_both_gateways_at_once_is_one_job_and_one_run(
    fleet: RunningFleet,
) -> None:
    headers = {
        "Authorization": f"Bearer {fleet.token(f'idem-{uuid.uuid4().hex[:8]}')}",
        "Idempotency-Key": uuid.uuid4().hex,
    }
    body = long_job("one key")
    async with aiohttp.ClientSession(headers=headers) as http:
        answers = await asyncio.gather(
            *(submit(http, gateway, body, {}) for gateway in fleet.gateways)
        )
        job_ids = {payload.get("job_id") for _, payload in answers}
        try:
            assert [status for status, _ in answers] == [202, 202], answers
            assert len(job_ids) == 1, answers
        finally:
            await cancel_all(http, fleet.gateways[0], [j for j in job_ids if j])
    (job_id,) = job_ids
    records = await committed_records(fleet.bootstrap, job_topics(fleet.topic_prefix))
    runs = [
        envelope
        for envelope in (json.loads(r.value or b"{}") for r in records)
        if envelope.get("job_id") == job_id and envelope.get("type") == "job.run"
    ]
    assert len(runs) == 1, runs
    assert runs[0]["data"]["attempt"] == 1
