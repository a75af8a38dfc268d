"""Idempotency-Keys are held for their whole window, whatever the load, and never forgotten
to make room: past the memory's bound new keys are refused instead."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from services.gateway.idempotency import IdempotencyMemory
from services.gateway.routes import build_app
from services.gateway.settings import GatewaySettings
from services.gateway.view import idempotent_job_id
from shared.lifecycle import JobStatus
from shared.topics import Priority
from tests.unit.test_gateway_api import FakeKafka, auth, make_api, no_checks

T0 = 1_800_000_000.0
DAY = 24 * 3600.0
BODY: dict[str, Any] = {"prompt": "x"}
DIGEST = b"d" * 16


def remember(memory: IdempotencyMemory, job_id: str, at: float) -> bool:
    return memory.remember(
        job_id,
        fingerprint=DIGEST,
        job_type="analysis",
        priority=Priority.HIGH,
        submitted_at=datetime.fromtimestamp(at, UTC),
        at=at,
    )


def test_a_key_is_held_for_its_whole_window_and_dropped_after() -> None:
    memory = IdempotencyMemory(window_s=DAY, max_keys=10)
    first, late = idempotent_job_id("u", "a"), idempotent_job_id("u", "b")
    assert remember(memory, first, T0)
    assert remember(memory, late, T0 + DAY / 2)
    assert not remember(memory, first, T0 + 5)  # held already
    memory.expire(T0 + DAY - 1)
    known = memory.recall(first)
    assert known is not None
    assert (known.job_type, known.priority, known.status) == (
        "analysis",
        Priority.HIGH,
        JobStatus.QUEUED,
    )
    assert known.submitted_at == datetime.fromtimestamp(T0, UTC)
    memory.expire(T0 + DAY + DAY / 24)
    assert memory.recall(first) is None
    assert memory.recall(late) is not None and len(memory) == 1


def test_a_full_memory_refuses_new_keys_and_keeps_the_old_ones() -> None:
    memory = IdempotencyMemory(window_s=DAY, max_keys=2)
    ids = [idempotent_job_id("u", str(n)) for n in range(3)]
    assert remember(memory, ids[0], T0) and remember(memory, ids[1], T0)
    assert memory.full
    assert not remember(memory, ids[2], T0)
    assert memory.recall(ids[0]) is not None and memory.recall(ids[2]) is None
    assert memory.dropped == 1
    memory.forget(ids[0])  # a job that was not published after all
    assert not memory.full and memory.recall(ids[0]) is None


async def test_a_key_300000_jobs_old_still_replays_the_same_job_and_publishes_nothing() -> None:
    kafka = FakeKafka()
    api, registry = make_api(kafka)
    view = api.view
    # As deployed: the view holds this many jobs in full, far fewer than are submitted.
    view.max_jobs = GatewaySettings.model_fields["gateway_view_max_jobs"].default
    assert view.max_jobs < 300_000
    headers = {**auth("alice"), "Idempotency-Key": "order-0"}
    async with TestClient(
        TestServer(build_app(api, registry, ready=no_checks, info=no_checks))
    ) as c:
        resp = await c.post("/api/v1/jobs", json=BODY, headers=headers)
        assert resp.status == 202
        job_id = (await resp.json())["job_id"]
        # Everyone else's keyed jobs, as the events reader applies them, within the window.
        now = datetime.now(UTC)
        start = now.timestamp()
        for n in range(1, 300_000):
            view.accepted(
                idempotent_job_id(f"user-{n % 997}", f"order-{n}"),
                owner=f"user-{n % 997}",
                job_type="analysis",
                priority=Priority.NORMAL,
                submitted_at=now,
                digest=DIGEST,
                at=start + n / 1000,
            )
        view.expire(start + 300)
        assert view.job(job_id) is None, "the full entry left the view"
        sent = len(kafka.sent)
        again = await c.post("/api/v1/jobs", json=BODY, headers=headers)
        assert again.status == 202
        assert again.headers["Idempotent-Replayed"] == "true"
        assert (await again.json())["job_id"] == job_id
        other = await c.post("/api/v1/jobs", json={"prompt": "y"}, headers=headers)
        assert other.status == 409
        assert len(kafka.sent) == sent, "no second job"
    await api.drain()


async def test_new_keys_answer_503_when_the_memory_is_full_and_unkeyed_jobs_still_go() -> None:
    kafka = FakeKafka()
    api, registry = make_api(kafka)
    api.view.keys.max_keys = 1
    async with TestClient(
        TestServer(build_app(api, registry, ready=no_checks, info=no_checks))
    ) as c:
        first = await c.post("/api/v1/jobs", json=BODY, headers={**auth(), "Idempotency-Key": "a"})
        assert first.status == 202
        refused = await c.post(
            "/api/v1/jobs", json=BODY, headers={**auth(), "Idempotency-Key": "b"}
        )
        assert refused.status == 503
        assert int(refused.headers["Retry-After"]) >= 1
        assert (await refused.json())["type"].endswith("/idempotency-memory-full")
        replay = await c.post("/api/v1/jobs", json=BODY, headers={**auth(), "Idempotency-Key": "a"})
        assert replay.status == 202
        plain = await c.post("/api/v1/jobs", json=BODY, headers=auth())
        assert plain.status == 202
        metrics = await (await c.get("/metrics")).text()
    assert 'reason="idempotency-memory-full"' in metrics
    assert [e.type for _, e in kafka.sent].count("job.run") == 2
    await api.drain()
