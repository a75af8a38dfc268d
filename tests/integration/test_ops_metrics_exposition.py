"""Every service's real `/metrics` after a job ran through the whole pipeline passes
`promtool check metrics`, and shows the job where the dashboard looks for it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from deploy.prometheus.promtool import PromtoolMissing, promtool
from deploy.simulator.server import Simulator
from deploy.simulator.settings import SimulatorSettings
from services.gateway.app import create_service as create_gateway
from services.gateway.settings import GatewaySettings
from services.notifier.app import create_service as create_notifier
from services.notifier.settings import NotifierSettings
from services.results.app import create_service as create_results
from services.results.settings import ResultsSettings
from services.streamer.app import create_service as create_streamer
from services.streamer.settings import StreamerSettings
from shared.auth import issue_token
from tests.support import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

FINAL_EVENTS = ("job.completed", "job.failed", "job.cancelled")


@pytest.fixture
async def pipeline(
    kafka_bootstrap: str, topic_prefix: str, database_url: str, auth_secret: str
) -> AsyncIterator[dict[str, str]]:
    """All four services in-process on fresh topics and a fresh database: their base URLs."""
    common: dict[str, Any] = {
        "kafka_bootstrap_servers": kafka_bootstrap,
        "topic_prefix": topic_prefix,
        "streamjobs_auth_secret": auth_secret,
        "log_json": False,
    }
    async with contextlib.AsyncExitStack() as stack:
        sim = await stack.enter_async_context(
            Simulator(SimulatorSettings(port=0, ttft_ms=0, tokens_per_second=0))
        )
        results = create_results(
            ResultsSettings(
                **common,
                database_url=database_url,
                results_port=0,
                results_host="127.0.0.1",
                results_group_id=f"{topic_prefix}-results",
                results_batch_delay_ms=20,
                results_session_timeout_ms=6000,
                results_heartbeat_interval_ms=500,
            ),
            registry=CollectorRegistry(),
        )
        await results.start()
        stack.push_async_callback(results.stop)
        streamer = create_streamer(
            StreamerSettings(
                **common,
                streamer_port=0,
                streamer_host="127.0.0.1",
                openai_base_url=sim.base_url,
                streamer_group_id=f"{topic_prefix}-streamer",
                streamer_retry_group_id=f"{topic_prefix}-streamer-retry",
                streamer_session_timeout_ms=6000,
                streamer_heartbeat_interval_ms=500,
                streamer_grace_s=2,
                streamer_lag_interval_s=0.2,
            ),
            registry=CollectorRegistry(),
        )
        await streamer.start()
        stack.push_async_callback(streamer.stop)
        notifier = create_notifier(
            NotifierSettings(
                **common, notifier_host="127.0.0.1", notifier_port=0, notifier_sse_port=0
            ),
            registry=CollectorRegistry(),
        )
        await notifier.start()
        stack.push_async_callback(notifier.stop)
        gateway = create_gateway(
            GatewaySettings(
                **common,
                gateway_port=0,
                gateway_host="127.0.0.1",
                results_url=f"http://127.0.0.1:{results.port}",
                gateway_public_ws_url=f"ws://127.0.0.1:{notifier.port}/ws",
            ),
            registry=CollectorRegistry(),
        )
        await gateway.start()
        stack.push_async_callback(gateway.stop)
        urls = {
            "gateway": f"http://127.0.0.1:{gateway.port}",
            "results": f"http://127.0.0.1:{results.port}",
            "notifier": f"http://127.0.0.1:{notifier.port}",
            "streamer": f"http://127.0.0.1:{streamer.port}",
        }
        async with aiohttp.ClientSession() as http:
            for name, url in urls.items():

                async def ready(url: str = url) -> bool:
                    async with http.get(f"{url}/readyz") as resp:
                        return resp.status == 200

                await wait_for(ready, timeout=30, message=f"{name} /readyz answers 200")
        yield urls


async def run_one_job(urls: dict[str, str], token: str) -> str:
    """Submit through the gateway, follow over the notifier's WebSocket; the final event."""
    headers = {"Authorization": f"Bearer {token}"}
    body = {
        "prompt": "Say why metrics matter. [[sim tokens=40]]",
        "job_type": "analysis",
        "priority": "high",
        "config": {"max_tokens": 40},
    }
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(f"{urls['gateway']}/api/v1/jobs", json=body) as resp:
            payload = await resp.json()
            assert resp.status == 202, payload
        job_id: str = payload["job_id"]
        ws_url = urls["notifier"].replace("http://", "ws://") + "/ws"
        async with asyncio.timeout(30), connect(ws_url) as ws:
            await ws.send(json.dumps({"type": "auth", "token": token}))
            await ws.send(
                json.dumps({"type": "subscribe", "channel": f"job:{job_id}", "last_seq": -1})
            )
            async for raw in ws:
                msg = json.loads(raw)
                if msg["type"] == "event" and msg["event"] in FINAL_EVENTS:
                    final: str = msg["event"]
                    break
            else:
                raise AssertionError("the WebSocket closed before the job finished")

        async def stored() -> bool:
            async with http.get(f"{urls['gateway']}/api/v1/jobs/{job_id}/result") as resp:
                return resp.status == 200

        await wait_for(stored, timeout=30, message=f"the result of {job_id} is stored")
    return final


def samples(text: str) -> dict[str, float]:
    """Each sample name summed over its labels."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


async def test_every_service_exposes_promtool_clean_metrics_after_a_job(
    pipeline: dict[str, str], auth_secret: str
) -> None:
    final = await run_one_job(pipeline, issue_token(auth_secret, "ops-check"))
    assert final == "job.completed"

    async def scrape_all() -> dict[str, str]:
        async with aiohttp.ClientSession() as http:
            out = {}
            for name, url in pipeline.items():
                async with http.get(f"{url}/metrics") as resp:
                    assert resp.status == 200, name
                    assert resp.headers["Content-Type"].startswith("text/plain"), name
                    out[name] = await resp.text()
            return out

    # The results service counts the job once its batch committed, a moment after the read.
    async def scraped_after_commit() -> dict[str, str]:
        texts = await scrape_all()
        persisted = samples(texts["results"]).get("streamjobs_results_events_persisted_total", 0)
        return texts if persisted >= 3 else {}

    texts = await wait_for(scraped_after_commit, timeout=20, message="results counted the events")

    problems = {}
    for name, text in texts.items():
        try:
            code, out = promtool("check", "metrics", stdin=text.encode())
        except PromtoolMissing as exc:
            pytest.fail(str(exc))
        if code != 0 or out.strip():
            problems[name] = out
    assert problems == {}

    seen = {name: samples(text) for name, text in texts.items()}
    assert seen["gateway"]["streamjobs_gateway_jobs_submitted_total"] == 1
    assert seen["streamer"]["streamjobs_streamer_jobs_completed_total"] == 1
    assert seen["streamer"]["streamjobs_streamer_queue_wait_seconds_count"] == 1
    assert seen["streamer"]["streamjobs_streamer_tokens_streamed_total"] >= 40
    assert seen["results"]["streamjobs_results_chunks_persisted_total"] >= 1
    assert seen["notifier"]["streamjobs_notifier_frames_sent_total"] >= 2
