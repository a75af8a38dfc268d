"""The /v1 routes in-process (fake Kafka, the real decider): the one admission path, and
refusals as OpenAI error objects while /api/v1 keeps problem JSON."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.gateway.routes import build_app
from shared.contracts import JobAccepted
from tests.unit.test_gateway_api import ADMISSION, FakeKafka, auth, make_api, no_checks

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def kafka() -> FakeKafka:
    return FakeKafka()


@pytest.fixture
async def client(kafka: FakeKafka) -> AsyncIterator[TestClient[Any, Any]]:
    api, registry = make_api(kafka, gateway_openai_wait_s=0.3)
    api.view.max_in_flight = 1  # the second job of a user in flight is over the limit
    app = build_app(api, registry, ready=no_checks, info=no_checks)
    await api.results.start()  # toward a port nothing listens on
    async with TestClient(TestServer(app)) as c:
        yield c
    await api.results.stop()
    await api.drain()


async def test_a_completion_is_admitted_as_a_job_with_the_headers_band(
    client: TestClient[Any, Any], kafka: FakeKafka
) -> None:
    resp = await client.post(
        "/v1/chat/completions",
        json={**CHAT, "metadata": {"ticket": "T-1", "streamjobs_job_type": "gas_analysis"}},
        headers={**auth(), "X-Streamjobs-Priority": "urgent"},
    )
    # The read side is not there: the wait ends, the job is named, and the SDK is told
    # not to ask again (that would be a second job).
    assert resp.status == 504
    assert resp.headers["x-should-retry"] == "false"
    body = await resp.json()
    job_id = resp.headers["X-Streamjobs-Job-Id"]
    assert body["error"]["code"] == "timeout" and job_id in body["error"]["message"]
    accepted = [e for _, e in kafka.sent if isinstance(e, JobAccepted)]
    assert [e.job_id for e in accepted] == [job_id]
    data = accepted[0].data
    assert data.priority.value == "urgent" and data.job_type == "gas_analysis"
    assert data.metadata == {"ticket": "T-1"}
    assert data.messages is not None and data.config.model == "gpt-4o-mini"


async def test_refusals_under_v1_are_openai_errors_and_api_v1_keeps_problems(
    client: TestClient[Any, Any], kafka: FakeKafka
) -> None:
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 401 and resp.content_type == "application/json"
    assert (await resp.json())["error"]["code"] == "invalid_api_key"
    assert "WWW-Authenticate" in resp.headers

    resp = await client.post("/v1/chat/completions", data=b"{not json", headers=auth())
    assert resp.status == 400
    assert (await resp.json())["error"]["type"] == "invalid_request_error"

    resp = await client.post("/v1/chat/completions", json={**CHAT, "messages": []}, headers=auth())
    assert resp.status == 400 and (await resp.json())["error"]["param"] == "messages"

    kafka.fail = {ADMISSION}
    resp = await client.post("/v1/chat/completions", json=CHAT, headers=auth())
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    error = (await resp.json())["error"]
    assert error["type"] == "server_error" and error["code"] == "kafka_unavailable"
    kafka.fail = set()
    resp = await client.post("/api/v1/jobs", json={"prompt": ""}, headers=auth())
    assert resp.status == 422 and resp.content_type == "application/problem+json"

    resp = await client.get("/v1/no-such-route")
    assert resp.status == 404 and "error" in await resp.json()
    resp = await client.delete("/v1/models")
    assert resp.status == 405 and "error" in await resp.json()
    resp = await client.get("/api/v1/no-such-route")
    assert resp.content_type == "application/problem+json"

    resp = await client.get(
        "/v1/chat/completions/j?stream=true&starting_after=nonsense", headers=auth()
    )
    assert resp.status in (400, 503)  # the read side is not there to find the job first


async def test_models_are_listed_in_openai_format_without_the_catch_all(
    client: TestClient[Any, Any],
) -> None:
    resp = await client.get("/v1/models")
    listed = await resp.json()
    assert listed["object"] == "list"
    assert all(m["object"] == "model" for m in listed["data"])
    assert "*" not in [m["id"] for m in listed["data"]]
    resp = await client.get("/v1/models/anything")  # the packaged file has a catch-all
    assert resp.status == 200 and (await resp.json())["id"] == "anything"


async def test_a_limit_is_a_rate_limit_error_with_retry_after(
    client: TestClient[Any, Any],
) -> None:
    first = await client.post("/v1/chat/completions", json=CHAT, headers=auth("bob"))
    assert first.status == 504  # admitted; no read side to answer it here
    second = await client.post("/v1/chat/completions", json=CHAT, headers=auth("bob"))
    assert second.status == 429 and int(second.headers["Retry-After"]) >= 1
    error = (await second.json())["error"]
    assert error["type"] == "rate_limit_error" and error["code"].startswith("rate_limit")
