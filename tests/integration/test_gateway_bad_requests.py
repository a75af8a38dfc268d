"""Hostile or broken HTTP never gets a 5xx: absolute-form targets, garbage Host headers,
huge targets and tokens, deep JSON, bad cursors and dates. Over raw sockets where a client
library would tidy the request up, against the real gateway and the real results service."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from services.results.app import ResultsService
from tests.integration.gateway_harness import (
    StartGateway,
    Tokens,
    bearer,
    http,
    start_gateway,
    tokens,
)
from tests.integration.results_kit import running, settings_for
from tests.support import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]
__all__ = ["http", "start_gateway", "tokens"]  # fixtures


@dataclass
class Raw:
    status: int
    headers: dict[str, str]
    body: bytes

    def problem(self) -> dict[str, Any]:
        assert self.headers.get("content-type", "").startswith("application/problem+json"), self
        body: dict[str, Any] = json.loads(self.body)
        assert body["status"] == self.status
        return body


async def send_raw(port: int, request: bytes) -> Raw:
    """One request written byte for byte; the answer read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return Raw(int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body)


def request(
    target: str, *, host: str = "gateway", token: str | None = None, body: bytes = b""
) -> bytes:
    method = "POST" if body else "GET"
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


@pytest.fixture
async def results(
    kafka_bootstrap: str, topic_prefix: str, database_url: str, auth_secret: str
) -> AsyncIterator[ResultsService]:
    async with running(
        settings_for(kafka_bootstrap, topic_prefix, database_url, auth_secret)
    ) as service:
        yield service


async def test_absolute_form_targets_are_served_like_origin_form(
    start_gateway: StartGateway, tokens: Tokens, results: ResultsService
) -> None:
    gw = await start_gateway(results_url=f"http://127.0.0.1:{results.port}")
    token = tokens("absolute")
    listed = await send_raw(
        gw.port, request("http://elsewhere.example/api/v1/jobs?limit=5", token=token)
    )
    assert listed.status == 200, listed
    assert json.loads(listed.body)["items"] == []
    submitted = await send_raw(
        gw.port,
        request(f"http://127.0.0.1:{gw.port}/api/v1/jobs", token=token, body=b'{"prompt":"x"}'),
    )
    assert submitted.status == 202, submitted
    job_id = json.loads(submitted.body)["job_id"]
    one = await send_raw(gw.port, request(f"http://x/api/v1/jobs/{job_id}", token=token))
    assert one.status in (200, 404), one  # read side may not have it yet; never a 5xx
    unknown = await send_raw(gw.port, request("http://x/nowhere"))
    assert unknown.status == 404 and unknown.problem()["type"].endswith("/not-found")


async def test_garbage_host_headers_and_odd_targets_never_get_a_5xx(
    start_gateway: StartGateway, tokens: Tokens, results: ResultsService
) -> None:
    gw = await start_gateway(results_url=f"http://127.0.0.1:{results.port}")
    token = tokens("hosts")
    for host in ("[::1", "a b:c@@", "\udcff\udcfe", ":99999", "x" * 2000, "evil.example:0"):
        for target in ("/api/v1/jobs", "/api/v1/job-types", "/dashboard", "/api/v1/jobs/%zz"):
            answer = await send_raw(gw.port, request(target, host=host, token=token))
            assert answer.status < 500, (host, target, answer)
            if answer.status >= 400:
                answer.problem()
    for target in ("//api/v1/jobs", "/api/v1/jobs/%00", "/api/v1/jobs/" + "%ff" * 10):
        answer = await send_raw(gw.port, request(target, token=token))
        assert 400 <= answer.status < 500 or answer.status == 200, (target, answer)
        if answer.status >= 400:
            answer.problem()
    # Not HTTP at all (an asterisk target on GET): the HTTP parser's own plain 400.
    assert (await send_raw(gw.port, request("*", token=token))).status == 400


async def test_huge_targets_tokens_and_deep_json_are_4xx_problems(
    start_gateway: StartGateway, tokens: Tokens, results: ResultsService
) -> None:
    gw = await start_gateway(results_url=f"http://127.0.0.1:{results.port}")
    token = tokens("huge")
    long_query = await send_raw(
        gw.port, request("/api/v1/jobs?status=" + "a" * 30_000, token=token)
    )
    assert long_query.status == 414
    assert long_query.problem()["type"].endswith("/target-too-long")
    job = "/api/v1/jobs/00000000-0000-4000-8000-000000000001"
    for bad in ("é" * 40, "\u2603.\u2603.\u2603", "a" * 20_000, "x." * 5000, "\udcff" * 10):
        for target, body in (
            ("/api/v1/jobs", b""),
            ("/api/v1/jobs", b'{"prompt":"x"}'),
            (f"{job}/cancel", b"{}"),
            (f"{job}/result", b""),
            ("/api/v1/analytics", b""),
        ):
            refused = await send_raw(gw.port, request(target, token=bad, body=body))
            assert refused.status == 401, (bad[:20], target, refused)
            assert refused.problem()["type"].endswith("/unauthorized")
            assert refused.headers["www-authenticate"].startswith("Bearer")
    deep = b'{"prompt":"x","metadata":' + b"[" * 5000 + b"]" * 5000 + b"}"
    nested = await send_raw(gw.port, request("/api/v1/jobs", token=token, body=deep))
    assert nested.status in (400, 422)
    nested.problem()


async def test_bad_cursors_and_dates_are_4xx_problems_through_the_real_read_side(
    start_gateway: StartGateway,
    tokens: Tokens,
    results: ResultsService,
    http: aiohttp.ClientSession,
) -> None:
    gw = await start_gateway(results_url=f"http://127.0.0.1:{results.port}")
    headers = bearer(tokens("cursors"))
    for path in (
        "/api/v1/jobs?cursor=not-a-cursor",
        "/api/v1/jobs?cursor=%00%ff",
        "/api/v1/jobs?cursor=" + "A" * 3000,
        "/api/v1/jobs?since=yesterday",
        "/api/v1/jobs?until=2026-13-45T99:00:00Z",
        "/api/v1/jobs?since=99999-01-01T00:00:00Z",
        "/api/v1/jobs?limit=-1",
        "/api/v1/jobs?limit=99999999999999999999",
        "/api/v1/analytics?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
        "/api/v1/analytics?since=0000-00-00",
        "/api/v1/analytics?group_by=%00",
        "/api/v1/analytics?bucket=century",
    ):
        async with http.get(f"{gw.url}{path}", headers=headers) as resp:
            assert 400 <= resp.status < 500, (path, resp.status, await resp.text())
            assert resp.content_type == "application/problem+json", path


async def test_the_edge_of_what_is_accepted_is_stored_and_read_back_by_the_read_side(
    start_gateway: StartGateway,
    tokens: Tokens,
    results: ResultsService,
    http: aiohttp.ClientSession,
) -> None:
    gw = await start_gateway(
        results_url=f"http://127.0.0.1:{results.port}", gateway_max_json_depth=32
    )
    headers = bearer(tokens("edge"))
    deep: Any = "bottom"
    for _ in range(30):  # metadata is level 2: its innermost list is level 32
        deep = [deep]
    metadata = {
        "deep": deep,
        "backslashes": "C:\\temp\\u000 \\\\",
        "emoji 😀": "😀 ünïcödé",
        "edges": [2**63 - 1, -(2**63), 0.25, True, None],
    }
    async with http.post(
        f"{gw.url}/api/v1/jobs", json={"prompt": "edge 😀", "metadata": metadata}, headers=headers
    ) as resp:
        assert resp.status == 202, await resp.text()
        job_id = (await resp.json())["job_id"]

    async def stored() -> dict[str, Any] | None:
        async with http.get(f"{gw.url}/api/v1/jobs/{job_id}", headers=headers) as resp:
            return await resp.json() if resp.status == 200 else None

    view = await wait_for(stored, message="the results service stores the accepted job")
    assert view["metadata"] == metadata
