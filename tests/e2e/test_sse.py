"""Server-Sent Events through the gateway's one base URL, resumed with Last-Event-ID."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from deploy.localstack.stack import Stack
from tests.e2e.test_pipeline import PROMPT, stored_result, submit

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]

FINAL = ("job.completed", "job.failed", "job.cancelled")


async def read_sse(
    url: str, token: str, *, last_event_id: str | None = None, stop_after_chunks: int | None = None
) -> list[tuple[str | None, str, dict[str, Any]]]:
    """(id, event, data) of each server-sent event until the final event (or N chunks)."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    events: list[tuple[str | None, str, dict[str, Any]]] = []
    fields: dict[str, str] = {}
    chunks = 0
    async with (
        asyncio.timeout(60),
        aiohttp.ClientSession() as http,
        http.get(url, headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "text/event-stream"
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith(":"):
                continue  # keep-alive comment
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
                continue
            if "data" not in fields:
                continue
            event = (fields.get("id"), fields.get("event", "message"), json.loads(fields["data"]))
            fields = {}
            events.append(event)
            if event[1] == "chunk":
                chunks += 1
                if stop_after_chunks is not None and chunks >= stop_after_chunks:
                    return events
            if event[1] in FINAL:
                return events
    raise AssertionError(f"the event stream ended before the job finished: {events[-3:]}")


async def test_sse_through_the_gateway_resumes_from_last_event_id_without_gap_or_duplicate(
    system: Stack, user_token: str
) -> None:
    base = system.urls()["gateway"]
    job_id = (await submit(base, user_token, prompt=PROMPT.replace("60", "80")))["job_id"]
    url = f"{base}/api/v1/jobs/{job_id}/events"

    first = await read_sse(url, user_token, stop_after_chunks=3)
    seen = [e for e in first if e[1] == "chunk"]
    last_id = seen[-1][0]
    assert last_id is not None
    rest = await read_sse(url, user_token, last_event_id=last_id)

    chunks = seen + [e for e in rest if e[1] == "chunk"]
    assert [c[2]["seq"] for c in chunks] == list(range(len(chunks))), "gap or duplicate"
    assert rest[-1][1] == "job.completed"
    text = "".join(c[2]["text"] for c in chunks)
    assert text == rest[-1][2]["data"]["response"]
    result = await stored_result(base, user_token, job_id)
    assert result["response"] == text


async def test_sse_refuses_another_users_job(system: Stack, user_token: str) -> None:
    from shared.auth import issue_token

    base = system.urls()["gateway"]
    job_id = (await submit(base, user_token, prompt=PROMPT))["job_id"]
    mallory = issue_token(system.auth_secret(), "mallory")
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{base}/api/v1/jobs/{job_id}/events", headers={"Authorization": f"Bearer {mallory}"}
        ) as resp,
    ):
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"
