"""Many upstreams per model, over the whole system: fallback, fallback model, continuation.

Upstreams outside the stack are simulators started here: one that answers every request
503, and one behind a recording proxy, so the test reads the requests the streamer sent.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from deploy.localstack.stack import Stack
from deploy.simulator.server import Simulator
from deploy.simulator.settings import SimulatorSettings
from services.streamer.continuation import CONTINUE_INSTRUCTION
from shared.auth import issue_token
from tests.e2e.conftest import running_system
from tests.e2e.test_pipeline import follow, stored_result, submit

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]


@dataclass
class RecordingProxy:
    """Forwards chat completions to `target`, keeping each request body; passes a cut on."""

    target: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.requests.append(json.loads(raw))
        headers = {"content-type": "application/json"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.target}/chat/completions", data=raw, headers=headers) as up,
        ):
            resp = web.StreamResponse(status=up.status, headers={"content-type": up.content_type})
            await resp.prepare(request)
            try:
                async for data in up.content.iter_any():
                    await resp.write(data)
            except aiohttp.ClientError:
                # The upstream cut the stream: so does the proxy, without an end.
                assert request.transport is not None
                request.transport.close()
                return resp
            await resp.write_eof()
            return resp


@pytest.fixture
async def broken() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorSettings(port=0, error_rate=1.0)) as sim:
        yield sim


@pytest.fixture
async def recorded() -> AsyncIterator[RecordingProxy]:
    async with Simulator(SimulatorSettings(port=0, ttft_ms=0, tokens_per_second=0)) as sim:
        proxy = RecordingProxy(sim.base_url)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", proxy.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        proxy.url = f"http://127.0.0.1:{port}/v1"
        yield proxy
        await runner.cleanup()


def workloads(broken: Simulator, recorded: RecordingProxy) -> str:
    # Weights make the broken upstream the first one drawn (all but certainly).
    return f"""
[models."flaky"]
price = {{ input = 1.0, output = 2.0 }}
[[models."flaky".upstreams]]
name = "broken"
base_url = "{broken.base_url}"
weight = 1000000
[[models."flaky".upstreams]]
name = "healthy"
weight = 0.000001

[models."doomed"]
fallback = "gpt-4o-mini"
[[models."doomed".upstreams]]
name = "broken"
base_url = "{broken.base_url}"
[[models."doomed".upstreams]]
name = "broken-too"
base_url = "{broken.base_url}"

[models."gpt-4o-mini"]
price = {{ input = 0.15, output = 0.60 }}
[[models."gpt-4o-mini".upstreams]]
name = "healthy"

[models."continuing"]
on_interrupt = "continue"
price = {{ input = 1.0, output = 1000.0 }}
[[models."continuing".upstreams]]
name = "recorded"
base_url = "{recorded.url}"
"""


@pytest.fixture
def upstream_system(
    kafka_bootstrap: str,
    database_url: str,
    topic_prefix: str,
    test_state_dir: Path,
    broken: Simulator,
    recorded: RecordingProxy,
) -> Iterator[Stack]:
    path = test_state_dir / f"workloads-{topic_prefix}.toml"
    path.write_text(workloads(broken, recorded))
    with running_system(
        test_state_dir,
        kafka_bootstrap,
        database_url,
        topic_prefix=topic_prefix,
        env={"STREAMJOBS_WORKLOADS_FILE": str(path), "STREAMER_RETRY_BASE_S": "0.05"},
    ) as stack:
        yield stack


async def test_a_failing_upstream_falls_back_to_the_next_then_to_the_fallback_model(
    upstream_system: Stack, broken: Simulator
) -> None:
    urls = upstream_system.urls()
    token = issue_token(upstream_system.auth_secret(), "alice")

    flaky = await submit(
        urls["gateway"], token, prompt="One. [[sim tokens=20]]", config={"model": "flaky"}
    )
    _, final = await follow(urls["notifier_ws"], token, flaky["job_id"])
    assert final["event"] == "job.completed", final
    result = await stored_result(urls["gateway"], token, flaky["job_id"])
    assert [(a["attempt"], a["upstream"], a["model"], a["status"]) for a in result["attempts"]] == [
        (1, "broken", "flaky", "failed"),
        (2, "healthy", "flaky", "completed"),
    ]
    assert "server_error" in result["attempts"][0]["reason"]
    assert result["attempt"] == 2 and result["usage"]["completion_tokens"] == 20

    doomed = await submit(
        urls["gateway"], token, prompt="Two. [[sim tokens=15]]", config={"model": "doomed"}
    )
    _, final = await follow(urls["notifier_ws"], token, doomed["job_id"])
    assert final["event"] == "job.completed", final
    result = await stored_result(urls["gateway"], token, doomed["job_id"])
    tried = [(a["upstream"], a["model"], a["status"]) for a in result["attempts"]]
    # Both upstreams of the model (drawn in either order: equal weights), then the fallback's.
    assert sorted(tried[:2]) == [("broken", "doomed", "failed"), ("broken-too", "doomed", "failed")]
    assert tried[2:] == [("healthy", "gpt-4o-mini", "completed")]
    assert result["model"] == "gpt-4o-mini"
    assert broken.stats.requests_total == 3, "each broken upstream was asked once per job"

    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{urls['gateway']}/api/v1/models") as resp,
    ):
        models = {m["name"]: m for m in await resp.json()}
    assert models["doomed"] == {
        "name": "doomed",
        "upstreams": ["broken", "broken-too"],
        "fallback": "gpt-4o-mini",
        "on_interrupt": "restart",
        "priced": False,
    }
    assert models["continuing"]["on_interrupt"] == "continue"
    assert "base_url" not in json.dumps(models) and broken.base_url not in json.dumps(models)

    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{urls['gateway']}/api/v1/jobs",
            json={"prompt": "x", "config": {"model": "nobody-routes-this"}},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp,
    ):
        problem = await resp.json()
    assert resp.status == 422 and problem["type"].endswith("unknown-model"), problem
    assert "nobody-routes-this" in problem["detail"] and "/api/v1/models" in problem["detail"]


async def test_a_cut_answer_continues_in_one_gap_free_stream_and_both_attempts_are_billed(
    upstream_system: Stack, recorded: RecordingProxy
) -> None:
    urls = upstream_system.urls()
    token = issue_token(upstream_system.auth_secret(), "alice")
    accepted = await submit(
        urls["gateway"],
        token,
        prompt="Tell a long story. [[sim tokens=300 cut_after=100 fail_times=1]]",
        config={"model": "continuing", "max_tokens": 400},
    )
    chunks, final = await follow(urls["notifier_ws"], token, accepted["job_id"])

    assert final["event"] == "job.completed", final
    assert final["data"]["attempt"] == 2 and final["data"]["continues"] == 1
    assert {c["attempt"] for c in chunks} == {1}, "the client's stream did not restart"
    assert [c["seq"] for c in chunks] == list(range(len(chunks))), "a gap or a duplicate"
    text = "".join(c["text"] for c in chunks)
    assert text == final["data"]["response"]

    first, second = recorded.requests
    partial = second["messages"][-2]
    assert partial["role"] == "assistant" and partial["content"]
    assert second["messages"][-1] == {"role": "user", "content": CONTINUE_INSTRUCTION}
    assert second["messages"][:-2] == first["messages"]
    assert text.startswith(partial["content"]) and len(text) > len(partial["content"])

    result = await stored_result(urls["gateway"], token, accepted["job_id"])
    assert result["response"] == text
    one, two = result["attempts"]
    assert (one["status"], two["status"], two["continues"]) == ("failed", "completed", 1)
    assert one["usage"]["completion_tokens"] == 100, "the cut attempt is billed"
    assert two["usage"]["completion_tokens"] > 0
    assert result["billed_usage"]["completion_tokens"] == (
        one["usage"]["completion_tokens"] + two["usage"]["completion_tokens"]
    )
    for attempt in (one, two):  # USD 1 per million input tokens, 1,000 per million output
        usage = attempt["usage"]
        expected = (usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 1000.0) / 1e6
        assert attempt["cost_usd"] == pytest.approx(expected)
    assert result["billed_cost_usd"] == pytest.approx(one["cost_usd"] + two["cost_usd"])
    assert result["billed_cost_usd"] > result["estimated_cost_usd"], "only the last attempt"

    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{urls['gateway']}/api/v1/jobs/{accepted['job_id']}/stream",
            headers={"Authorization": f"Bearer {token}"},
        ) as resp,
    ):
        snapshot = await resp.json()
    assert (snapshot["attempt"], snapshot["text"]) == (1, text), "the stream's text is whole"
