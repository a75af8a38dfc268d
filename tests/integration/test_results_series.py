"""The analytics series over a known set of jobs equal the figures worked out by hand."""

from __future__ import annotations

from datetime import timedelta

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from shared.topics import Priority
from tests.integration.results_kit import (
    T0,
    Reader,
    caught_up,
    job_script,
    publish_script,
    running,
    settings_for,
)
from tests.support import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

S = timedelta(seconds=1)


async def test_series_per_minute_match_the_jobs_and_keep_a_user_to_their_own(
    kafka_bootstrap: str,
    topic_prefix: str,
    database_url: str,
    auth_secret: str,
    producer: AIOKafkaProducer,
) -> None:
    # Five minutes of one-minute steps from T0. Alice's jobs, their moments in seconds:
    scripts = [
        # submitted 0, started 30, completed 50 with 4 tokens, ttft 100 ms
        job_script("a", submitted_at=T0, queued_ms=30_000, duration_ms=20_000,
                   texts=("x",) * 4, ttft_ms=100),
        # submitted 10, started 100, completed 110 with 2 tokens, ttft 300 ms
        job_script("b", submitted_at=T0 + 10 * S, queued_ms=90_000, duration_ms=10_000,
                   texts=("y",) * 2, ttft_ms=300),
        # high band: submitted 70, started 70.01, failed 71, nothing streamed
        job_script("c", submitted_at=T0 + 70 * S, priority=Priority.HIGH, queued_ms=10,
                   duration_ms=990, texts=(), outcome="failed"),
        # submitted 20, cancelled in the queue at 170
        job_script("e", submitted_at=T0 + 20 * S, queued_ms=150_000, outcome="cancelled-queued"),
        # submitted 130, still queued
        job_script("d", submitted_at=T0 + 130 * S, outcome="queued"),
        # bob's: submitted 5, completed 6.05 with 2 tokens
        job_script("bob", user="bob", submitted_at=T0 + 5 * S),
    ]  # fmt: skip
    settings = settings_for(kafka_bootstrap, topic_prefix, database_url, auth_secret)
    async with running(settings) as service, aiohttp.ClientSession() as http:
        for script in scripts:
            await publish_script(producer, topic_prefix, script)
        await wait_for(lambda: caught_up(service), message="records not written")
        base = f"http://127.0.0.1:{service.port}"
        alice = Reader(http, base, auth_secret, "alice")
        admin = Reader(http, base, auth_secret, "root", "admin")
        window = {"since": T0.isoformat(), "until": (T0 + 300 * S).isoformat(), "step": "60"}

        status, body = await alice.get("/analytics/series", **window)
        assert status == 200, body
        assert body["step_s"] == 60
        assert body["t"] == [int((T0 + i * 60 * S).timestamp()) for i in range(5)]
        rates = {k: [round(v * 60, 6) for v in vs] for k, vs in body["jobs_per_second"].items()}
        assert rates == {
            "submitted": [3, 1, 1, 0, 0],
            "completed": [1, 1, 0, 0, 0],
            "failed": [0, 1, 0, 0, 0],
            "cancelled": [0, 0, 1, 0, 0],
        }
        assert [round(v * 60, 6) for v in body["tokens_per_second"]] == [4, 2, 0, 0, 0]
        # Waiting at each step's end (60, 120, 180, ...): b and e, then e, then d.
        assert body["queue_depth"] == {
            "urgent": [0] * 5,
            "high": [0] * 5,
            "normal": [2, 1, 1, 1, 1],
            "low": [0] * 5,
        }
        # Step 1 started b (90 s wait) and c (10 ms): percentile_cont interpolates.
        assert body["queue_wait_p95_ms"] == [
            pytest.approx(30_000),
            pytest.approx(10 + 0.95 * (90_000 - 10)),
            None,
            None,
            None,
        ]
        assert body["ttft_p95_ms"] == [pytest.approx(100), pytest.approx(300), None, None, None]

        status, body = await admin.get("/analytics/series", **window)
        assert status == 200, body
        assert round(body["jobs_per_second"]["submitted"][0] * 60, 6) == 4
        assert round(body["jobs_per_second"]["completed"][0] * 60, 6) == 2
        assert round(body["tokens_per_second"][0] * 60, 6) == 6

        status, body = await alice.get("/analytics/series", **{**window, "step": "0"})
        assert status == 400
        assert body["parameter"] == "step"
