"""Per-user bounds of the gateway: cancels per minute, live stream slots."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.gateway.limits import PerMinute, StreamSlots, StreamsRefused
from services.gateway.routes import build_app
from tests.unit.test_gateway_api import FakeKafka, auth, make_api, no_checks

T0 = 1_000.0


def test_per_minute_slides_and_says_when_to_retry() -> None:
    limit = PerMinute(2)
    assert limit.take("alice", T0) is None
    assert limit.take("alice", T0 + 10) is None
    assert limit.take("alice", T0 + 20) == 40
    assert limit.take("bob", T0 + 20) is None  # per user
    assert limit.take("alice", T0 + 60) is None
    assert PerMinute(0).take("alice", T0) is None  # off


def test_per_minute_forgets_idle_users_to_stay_bounded() -> None:
    limit = PerMinute(1, max_users=10)
    for n in range(10):
        limit.take(f"u{n}", T0)
    limit.take("late", T0 + 61)
    assert len(limit._times) == 1


async def test_stream_slots_cap_each_user_and_bound_the_wait() -> None:
    slots = StreamSlots(capacity=2, per_user=1, wait_s=0.2)
    async with slots.hold("alice"):
        with pytest.raises(StreamsRefused) as per_user:
            async with slots.hold("alice"):
                pass
        assert per_user.value.reason == StreamSlots.PER_USER
        async with slots.hold("bob"):
            assert slots.open == 2
            with pytest.raises(StreamsRefused) as busy:
                async with slots.hold("carol"):
                    pass
            assert busy.value.reason == StreamSlots.BUSY and busy.value.retry_after_s >= 1
        waiting = asyncio.create_task(_hold_once(slots, "carol"))
        await asyncio.sleep(0)  # carol is waiting for the slot bob just freed
        assert await asyncio.wait_for(waiting, 1) is True
    assert slots.open == 0 and slots._held == {}


async def _hold_once(slots: StreamSlots, user: str) -> bool:
    async with slots.hold(user):
        return True


async def test_cancels_past_the_per_user_limit_answer_429_with_retry_after() -> None:
    kafka = FakeKafka()
    api, registry = make_api(kafka, gateway_cancels_per_minute=2)
    app = build_app(api, registry, ready=no_checks, info=no_checks)
    async with TestClient(TestServer(app)) as c:
        job_id = (
            await (await c.post("/api/v1/jobs", json={"prompt": "x"}, headers=auth())).json()
        )["job_id"]
        for _ in range(2):
            assert (await c.post(f"/api/v1/jobs/{job_id}/cancel", headers=auth())).status == 202
        limited = await c.post(f"/api/v1/jobs/{job_id}/cancel", headers=auth())
        assert limited.status == 429
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        body: dict[str, Any] = await limited.json()
        assert body["type"].endswith("/rate-limit-cancels-per-minute")
        other = await c.post(f"/api/v1/jobs/{job_id}/cancel", headers=auth("bob"))
        assert other.status == 404, "bob has his own allowance (and the job is not his)"
        metrics = await (await c.get("/metrics")).text()
    assert 'streamjobs_gateway_rate_limited_total{limit="cancels-per-minute"} 1.0' in metrics
    assert [e.type for _, e in kafka.sent].count("job.cancel") == 2
    await api.drain()
