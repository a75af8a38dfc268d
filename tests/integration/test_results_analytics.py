"""Analytics over a known set of jobs equal the figures computed here by hand."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from shared.topics import Priority
from tests.bench.figures import percentile
from tests.integration.results_kit import (
    T0,
    JobScript,
    Reader,
    caught_up,
    job_script,
    publish_script,
    running,
    settings_for,
)
from tests.support import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

PRICES = {  # USD per 1M tokens: (prompt, completion), the service's defaults
    "gpt-4o-mini": (Decimal("0.15"), Decimal("0.60")),
    "gpt-4o": (Decimal("2.50"), Decimal("10.00")),
    "gpt-4.1": (Decimal("2.00"), Decimal("8.00")),
}
REPORT = {
    "findings": [
        {"severity": "critical", "title": "t", "detail": "d"},
        {"severity": "low", "title": "t", "detail": "d"},
        {"severity": "low", "title": "t", "detail": "d"},
    ]
}


def cost(model: str, prompt: int, completion: int) -> float:
    p, c = PRICES[model]
    return float((p * prompt + c * completion) / 1_000_000)


async def test_analytics_match_figures_computed_by_hand(
    kafka_bootstrap: str,
    topic_prefix: str,
    database_url: str,
    auth_secret: str,
    producer: AIOKafkaProducer,
) -> None:
    minute = timedelta(minutes=1)
    # alice: three plain completions (gpt-4o-mini), one security review (gpt-4o),
    # one failure, one cancelled in the queue, one still queued; bob: one completion.
    minis = [
        job_script(
            f"mini-{i}",
            submitted_at=T0 + i * timedelta(seconds=10),
            queued_ms=q,
            ttft_ms=t,
            duration_ms=d,
            prompt_tokens=p,
            texts=("x",) * n,
        )
        for i, (q, t, d, p, n) in enumerate(
            [(10, 100, 1000, 10, 2), (20, 200, 2100, 20, 4), (40, 150, 4150, 30, 8)]
        )
    ]
    review = job_script(
        "review",
        job_type="security_analysis",
        priority=Priority.HIGH,
        model="gpt-4o",
        submitted_at=T0 + 2 * minute,
        queued_ms=5,
        ttft_ms=50,
        duration_ms=550,
        prompt_tokens=100,
        texts=("{}",) * 5,
        response=json.dumps(REPORT),
    )
    failed = job_script("failed", submitted_at=T0 + 3 * minute, queued_ms=30, outcome="failed")
    cancelled = job_script("cancelled", submitted_at=T0 + 3 * minute, outcome="cancelled-queued")
    queued = job_script("queued", submitted_at=T0 + 4 * minute, outcome="queued")
    bobs = job_script("bob", user="bob", model="gpt-4.1", submitted_at=T0 + minute)
    outside = job_script("outside", submitted_at=T0 - timedelta(days=2))
    scripts: list[JobScript] = [*minis, review, failed, cancelled, queued, bobs, outside]

    settings = settings_for(kafka_bootstrap, topic_prefix, database_url, auth_secret)
    async with running(settings) as service, aiohttp.ClientSession() as http:
        for script in scripts:
            await publish_script(producer, topic_prefix, script)
        await wait_for(lambda: caught_up(service), message="records not written")
        base = f"http://127.0.0.1:{service.port}"
        alice = Reader(http, base, auth_secret, "alice")
        admin = Reader(http, base, auth_secret, "root", "admin")
        window = {
            "since": (T0 - timedelta(hours=1)).isoformat(),
            "until": (T0 + timedelta(hours=1)).isoformat(),
        }

        status, body = await alice.get("/analytics", **window, group_by="model,job_type")
        assert status == 200, body
        totals = body["totals"]
        assert totals["jobs"] == 7
        assert totals["by_status"] == {
            "queued": 1,
            "running": 0,
            "retrying": 0,
            "completed": 4,
            "failed": 1,
            "cancelled": 1,
        }
        assert totals["success_rate"] == pytest.approx(4 / 6)
        assert totals["error_rate"] == pytest.approx(1 / 6)
        # Queue wait counts every job that started (the failed one too).
        waits = [10.0, 20.0, 40.0, 5.0, 30.0]
        ttfts = [100.0, 200.0, 150.0, 50.0]
        durations = [1000.0, 2100.0, 4150.0, 550.0]
        tps = [2 / 0.9, 4 / 1.9, 8 / 4.0, 5 / 0.5]
        for key, values in (
            ("queue_wait_ms", waits),
            ("time_to_first_token_ms", ttfts),
            ("duration_ms", durations),
            ("tokens_per_second", tps),
        ):
            for q in (50, 95, 99):
                assert totals[key][f"p{q}"] == pytest.approx(percentile(values, q)), (key, q)
        assert totals["prompt_tokens"] == 10 + 20 + 30 + 100
        # The failed job streamed two one-token chunks before it failed: billed, so counted.
        assert totals["completion_tokens"] == 2 + 4 + 8 + 5 + 2
        assert totals["total_tokens"] == 60 + 100 + 19 + 2
        expected_cost = (
            cost("gpt-4o-mini", 10, 2)
            + cost("gpt-4o-mini", 20, 4)
            + cost("gpt-4o-mini", 30, 8)
            + cost("gpt-4o", 100, 5)
            + cost("gpt-4o-mini", 0, 2)
        )
        assert totals["cost_usd"] == pytest.approx(expected_cost)
        assert body["severity_breakdown"] == {
            "critical": 1,
            "high": 0,
            "medium": 0,
            "low": 2,
            "info": 0,
        }
        assert body["errors_by_reason"] == {"UpstreamServerError": 1}

        rows = {(r["model"], r["job_type"]): r for r in body["rows"]}
        assert set(rows) == {("gpt-4o-mini", "analysis"), ("gpt-4o", "security_analysis")}
        minis_row = rows[("gpt-4o-mini", "analysis")]
        assert minis_row["jobs"] == 6
        assert minis_row["duration_ms"]["p50"] == pytest.approx(2100.0)
        assert minis_row["cost_usd"] == pytest.approx(expected_cost - cost("gpt-4o", 100, 5))
        assert rows[("gpt-4o", "security_analysis")]["success_rate"] == 1.0

        status, body = await alice.get("/analytics", **window, group_by="bucket", bucket="minute")
        per_minute = {datetime.fromisoformat(r["bucket"]): r["jobs"] for r in body["rows"]}
        assert per_minute == {T0 + i * minute: n for i, n in enumerate([3, 0, 1, 2, 1]) if n}

        status, body = await admin.get("/analytics", **window, group_by="user_id")
        assert {r["user_id"]: r["jobs"] for r in body["rows"]} == {"alice": 7, "bob": 1}
        assert body["totals"]["cost_usd"] == pytest.approx(expected_cost + cost("gpt-4.1", 10, 2))
