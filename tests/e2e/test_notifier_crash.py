"""The notifier process killed mid-stream: a client reconnects to its successor and resumes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from deploy.localstack.stack import Stack
from tests.e2e.test_pipeline import stored_result, submit

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]


async def read_chunks(
    ws_url: str, token: str, job_id: str, *, last_seq: int, attempt: int, stop_after: int | None
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Chunks after `last_seq` until the final event (or `stop_after` chunks); and that event."""
    chunks: list[dict[str, Any]] = []
    async with asyncio.timeout(60), connect(ws_url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        await ws.send(
            json.dumps(
                {
                    "type": "subscribe",
                    "channel": f"job:{job_id}",
                    "last_seq": last_seq,
                    "attempt": attempt,
                }
            )
        )
        try:
            async for raw in ws:
                frame = json.loads(raw)
                if frame["type"] == "chunk":
                    chunks.append(frame)
                    if stop_after is not None and len(chunks) >= stop_after:
                        return chunks, None
                elif frame["type"] == "event" and frame["event"] == "job.completed":
                    return chunks, frame
                elif frame["type"] in ("error", "resync"):
                    raise AssertionError(f"notifier said {frame}")
        except ConnectionClosed:
            return chunks, None
    return chunks, None


async def test_a_client_resumes_on_a_restarted_notifier_after_kill_9_with_the_exact_text(
    system: Stack, user_token: str
) -> None:
    urls = system.urls()
    prompt = "Stream for a while. [[sim tokens=240 tps=40]]"
    job_id = (await submit(urls["gateway"], user_token, prompt=prompt))["job_id"]

    before, _ = await read_chunks(
        urls["notifier_ws"], user_token, job_id, last_seq=-1, attempt=1, stop_after=3
    )
    system.processes["notifier"].kill()  # SIGKILL: no goodbye, no state saved
    await asyncio.to_thread(system.start_service, "notifier")

    last = before[-1]
    after, final = await read_chunks(
        urls["notifier_ws"],
        user_token,
        job_id,
        last_seq=last["seq"],
        attempt=last["attempt"],
        stop_after=None,
    )
    assert final is not None, "the job's completion never reached the resumed client"
    chunks = before + after
    assert [c["seq"] for c in chunks] == list(range(len(chunks))), "gap or duplicate"
    text = "".join(c["text"] for c in chunks)
    assert text == final["data"]["response"]
    assert (await stored_result(urls["gateway"], user_token, job_id))["response"] == text
