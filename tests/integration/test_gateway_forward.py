"""Reads forwarded to the results service: the proxy's mechanics against a stand-in server,
then the real results service over the real PostgreSQL and Kafka."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest
from aiohttp import web

from services.results.app import ResultsService
from tests.integration.gateway_harness import (
    GatewayKit,
    StartGateway,
    bearer,
    http,
    kit,
    start_gateway,
)
from tests.integration.results_kit import running, settings_for
from tests.support import wait_for

pytestmark = pytest.mark.kafka
__all__ = ["http", "kit", "start_gateway"]  # fixtures


class StandIn:
    """A tiny results service that records what reached it and answers as told."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.answer: tuple[int, bytes, dict[str, str]] = (200, b"{}", {})
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "authorization": request.headers.get("Authorization"),
                "traceparent": request.headers.get("traceparent"),
                "cookie": request.headers.get("Cookie"),
            }
        )
        status, body, headers = self.answer
        return web.Response(status=status, body=body, headers=headers)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def stand_in() -> AsyncIterator[StandIn]:
    server = StandIn()
    await server.start()
    yield server
    await server.stop()


async def test_reads_are_forwarded_with_path_query_and_token_and_answered_as_is(
    kit: GatewayKit, stand_in: StandIn
) -> None:
    start_gateway, tokens, http, *_ = kit
    gw = await start_gateway(results_url=stand_in.url)
    token = tokens("alice")
    stand_in.answer = (
        429,
        b'{"type": "x", "title": "slow down", "status": 429}',
        {"Content-Type": "application/problem+json", "Retry-After": "7", "X-Internal": "no"},
    )
    paths = [
        "/api/v1/jobs?status=queued&limit=5&cursor=a%2Bb",
        "/api/v1/jobs/j-1",
        "/api/v1/jobs/j-1/stream",
        "/api/v1/jobs/j-1/result",
        "/api/v1/analytics?group_by=model,job_type&since=2026-01-01T00%3A00%3A00%2B00%3A00",
    ]
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    for path in paths:
        async with http.get(
            f"{gw.url}{path}", headers=bearer(token, traceparent=trace, Cookie="c=1")
        ) as resp:
            assert resp.status == 429
            assert resp.content_type == "application/problem+json"
            assert resp.headers["Retry-After"] == "7"
            assert "X-Internal" not in resp.headers
            assert (await resp.json())["title"] == "slow down"
    sent = [urlsplit(p) for p in paths]
    assert [(s["path"], parse_qsl(s["query"])) for s in stand_in.seen] == [
        (u.path, parse_qsl(u.query)) for u in sent
    ]
    assert {s["method"] for s in stand_in.seen} == {"GET"}
    assert {s["authorization"] for s in stand_in.seen} == {f"Bearer {token}"}
    assert {s["traceparent"] for s in stand_in.seen} == {trace}
    assert {s["cookie"] for s in stand_in.seen} == {None}

    stand_in.answer = (
        200,
        b'{"items": [], "next_cursor": null}',
        {"Content-Type": "application/json"},
    )
    async with http.get(f"{gw.url}/api/v1/jobs", headers=bearer(token)) as resp:
        assert resp.status == 200
        assert await resp.json() == {"items": [], "next_cursor": None}


async def test_reads_need_a_token_before_anything_is_forwarded(
    start_gateway: StartGateway, http: aiohttp.ClientSession, stand_in: StandIn
) -> None:
    gw = await start_gateway(results_url=stand_in.url)
    async with http.get(f"{gw.url}/api/v1/jobs") as resp:
        assert resp.status == 401
    assert stand_in.seen == []


async def test_reads_answer_503_while_the_results_service_is_down_and_submitting_works(
    kit: GatewayKit,
) -> None:
    start_gateway, tokens, http, *_ = kit
    gw = await start_gateway()  # nothing listens at its results_url
    token = tokens("alice")
    async with http.get(f"{gw.url}/api/v1/jobs/abc", headers=bearer(token)) as resp:
        assert resp.status == 503
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["type"].endswith("/results-unavailable")
        assert resp.headers["Retry-After"] == "1"
    async with http.post(
        f"{gw.url}/api/v1/jobs", json={"prompt": "still works"}, headers=bearer(token)
    ) as resp:
        assert resp.status == 202


@pytest.fixture
async def results(
    kafka_bootstrap: str, topic_prefix: str, database_url: str, auth_secret: str
) -> AsyncIterator[ResultsService]:
    async with running(
        settings_for(kafka_bootstrap, topic_prefix, database_url, auth_secret)
    ) as service:
        yield service


async def get(http: aiohttp.ClientSession, url: str, token: str) -> tuple[int, dict[str, Any]]:
    async with http.get(url, headers=bearer(token)) as resp:
        return resp.status, await resp.json()


@pytest.mark.postgres
async def test_submitted_job_reads_back_through_the_real_results_service(
    kit: GatewayKit, results: ResultsService
) -> None:
    start_gateway, tokens, http, *_ = kit
    gw = await start_gateway(results_url=f"http://127.0.0.1:{results.port}")
    alice, bob = tokens("alice"), tokens("bob")
    async with http.post(
        f"{gw.url}/api/v1/jobs",
        json={"prompt": "read me back", "priority": "low", "metadata": {"k": "v"}},
        headers=bearer(alice),
    ) as resp:
        assert resp.status == 202
        job_id = (await resp.json())["job_id"]
    job_url = f"{gw.url}/api/v1/jobs/{job_id}"

    async def stored() -> dict[str, Any] | None:
        status, body = await get(http, job_url, alice)
        return body if status == 200 else None

    view = await wait_for(stored, message="the results service stores the accepted job")
    assert (view["job_id"], view["user_id"], view["status"]) == (job_id, "alice", "queued")
    assert (view["priority"], view["metadata"]) == ("low", {"k": "v"})
    status, page = await get(http, f"{gw.url}/api/v1/jobs?limit=10", alice)
    assert status == 200 and [j["job_id"] for j in page["items"]] == [job_id]
    status, problem = await get(http, f"{job_url}/result", alice)
    assert (status, problem["type"].split("/")[-1]) == (409, "not-finished")

    # Isolation: bob reads and cancels nothing of alice's.
    for suffix in ("", "/stream", "/result"):
        assert (await get(http, f"{job_url}{suffix}", bob))[0] == 404
    status, page = await get(http, f"{gw.url}/api/v1/jobs", bob)
    assert status == 200 and page["items"] == []
    async with http.post(f"{job_url}/cancel", headers=bearer(bob)) as resp:
        assert resp.status == 404


@pytest.mark.postgres
async def test_cancel_of_a_job_older_than_the_view_asks_the_results_service(
    kit: GatewayKit, results: ResultsService
) -> None:
    start_gateway, tokens, http, *_ = kit
    results_url = f"http://127.0.0.1:{results.port}"
    first = await start_gateway(results_url=results_url)
    alice, bob = tokens("alice"), tokens("bob")
    async with http.post(
        f"{first.url}/api/v1/jobs", json={"prompt": "p"}, headers=bearer(alice)
    ) as resp:
        job_id = (await resp.json())["job_id"]

    async def stored() -> bool:
        return (await get(http, f"{first.url}/api/v1/jobs/{job_id}", alice))[0] == 200

    await wait_for(stored, message="the results service stores the job")
    late = await start_gateway(
        results_url=results_url, gateway_events_lookback_s=0, gateway_admission_rebuild_s=0
    )
    assert late.view.job(job_id) is None
    async with http.post(f"{late.url}/api/v1/jobs/{job_id}/cancel", headers=bearer(bob)) as resp:
        assert resp.status == 404
    async with http.post(f"{late.url}/api/v1/jobs/{job_id}/cancel", headers=bearer(alice)) as resp:
        assert resp.status == 202
        assert await resp.json() == {"job_id": job_id, "status": "queued"}
