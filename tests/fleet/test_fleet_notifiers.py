"""The fleet's two notifiers split the chunk partitions: a job's links name the instance that
serves it, the other instance redirects a subscriber there, the client that follows the
redirect gets the whole stream, and each instance reads about half of the chunk records."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect

from shared.routing import chunk_partition, notifier_for
from shared.topics import chunks_topic
from tests.fleet.conftest import FLEET_LIMITS, RunningFleet, committed_records
from tests.support import wait_for

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.postgres,
    pytest.mark.e2e,
    pytest.mark.timeout(120, func_only=True),
]

FINAL_EVENTS = frozenset({"job.completed", "job.failed", "job.cancelled"})
FRAME_TIMEOUT_S = 30.0


def job_body(tokens: int, tps: int) -> dict[str, Any]:
    return {
        "prompt": f"Count to a few. [[sim tokens={tokens} tps={tps}]]",
        "job_type": "analysis",
        "priority": "high",
        "config": {"model": "gpt-4o-mini", "max_tokens": tokens},
    }


async def submit(http: aiohttp.ClientSession, gateway: str, body: dict[str, Any]) -> Any:
    async with http.post(f"{gateway}/api/v1/jobs", json=body) as resp:
        assert resp.status == 202, await resp.text()
        return await resp.json()


async def recv(ws: ClientConnection) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT_S))
    return frame


async def subscribe(ws: ClientConnection, token: str, job_id: str) -> None:
    await ws.send(json.dumps({"type": "auth", "token": token}))
    await ws.send(json.dumps({"type": "subscribe", "channel": f"job:{job_id}", "last_seq": -1}))


async def redirect_from(url: str, token: str, job_id: str) -> dict[str, Any]:
    """Subscribe at `url`; the redirect frame it answers with."""
    async with connect(url, open_timeout=10) as ws:
        await subscribe(ws, token, job_id)
        while True:
            frame = await recv(ws)
            assert frame["type"] in ("authenticated", "redirect"), frame
            if frame["type"] == "redirect":
                return frame


async def follow(url: str, token: str, job_id: str) -> tuple[list[int], dict[str, Any]]:
    """Subscribe at `url` from the start; the seqs of every chunk, in order, and the final
    event."""
    seqs: list[int] = []
    async with connect(url, open_timeout=10) as ws:
        await subscribe(ws, token, job_id)
        while True:
            frame = await recv(ws)
            assert frame["type"] not in ("error", "redirect", "resync"), frame
            if frame["type"] == "chunk":
                assert frame["attempt"] == 1, frame
                seqs.append(int(frame["seq"]))
            elif frame["type"] == "event" and frame["event"] in FINAL_EVENTS:
                return seqs, frame


async def test_a_client_at_the_other_notifier_is_redirected_and_gets_every_chunk_and_the_end(
    fleet: RunningFleet,
) -> None:
    """One job served by each instance, each subscribed first at the other one, while it
    streams."""
    partitions = fleet.fleet.partitions
    served: dict[int, tuple[str, dict[str, Any]]] = {}  # instance -> (token, answer)
    for n in range(12):  # a user per job: the in-flight limit never decides how many tries
        if len(served) == 2:
            break
        token = fleet.token(f"redirected-{uuid.uuid4().hex[:8]}")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            answer = await submit(http, fleet.gateways[n % 2], job_body(tokens=60, tps=30))
        served.setdefault(notifier_for(answer["job_id"], partitions, 2), (token, answer))
    assert set(served) == {0, 1}, "twelve job ids all hashed to one notifier"
    for instance, (token, answer) in served.items():
        job_id = answer["job_id"]
        assert answer["links"]["websocket"] == fleet.ws_url(instance), answer["links"]
        frame = await redirect_from(fleet.ws_url(1 - instance), token, job_id)
        assert (frame["url"], frame["instance"], frame["job_id"]) == (
            fleet.ws_url(instance),
            instance,
            job_id,
        )
        seqs, final = await follow(frame["url"], token, job_id)
        assert final["event"] == "job.completed", final
        assert seqs == list(range(final["data"]["last_seq"] + 1)), seqs
        assert len(seqs) > 1


def chunk_records_read(metrics_text: str, topic: str) -> float:
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "streamjobs_notifier_records":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels.get("topic") == topic:
                    return float(sample.value)
    return 0.0


async def test_each_notifier_reads_about_half_of_the_chunk_records(fleet: RunningFleet) -> None:
    topic = chunks_topic(fleet.topic_prefix)
    partitions = fleet.fleet.partitions

    async def counters() -> list[float]:
        async with aiohttp.ClientSession() as http:
            read = []
            for i in range(2):
                async with http.get(f"{fleet.url('notifier', i)}/metrics") as resp:
                    read.append(chunk_records_read(await resp.text(), topic))
            return read

    async def quiet() -> list[float]:
        """The counters once they stop moving, so no earlier test's jobs count as ours."""
        first = await counters()
        await asyncio.sleep(1.0)
        return first if await counters() == first else []

    before = await wait_for(quiet, timeout=30, interval=0, message="the chunk stream goes quiet")
    per_user = int(FLEET_LIMITS["GATEWAY_MAX_IN_FLIGHT"])
    users = [fleet.token(f"split-{uuid.uuid4().hex[:8]}") for _ in range(8)]
    owners: dict[str, str] = {}  # job id -> its user's token
    for token in users:  # 8 users x their in-flight limit: 40 jobs, streamed at once
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            answers = await asyncio.gather(
                *(submit(http, fleet.gateways[n % 2], job_body(20, 200)) for n in range(per_user))
            )
            owners |= {a["job_id"]: token for a in answers}

    async def every_job_completed() -> bool:
        async with aiohttp.ClientSession() as http:
            for job_id, token in owners.items():
                headers = {"Authorization": f"Bearer {token}"}
                url = f"{fleet.gateways[0]}/api/v1/jobs/{job_id}"
                async with http.get(url, headers=headers) as resp:
                    if resp.status != 200 or (await resp.json())["status"] != "completed":
                        return False
        return True

    await wait_for(every_job_completed, timeout=60, interval=0.5, message="every job completes")
    records = await committed_records(fleet.bootstrap, [topic])
    mine = [r for r in records if r.key is not None and r.key.decode() in owners]
    assert {r.key for r in mine} == {job_id.encode() for job_id in owners}
    assert all(r.key and r.partition == chunk_partition(r.key.decode(), partitions) for r in mine)
    produced = Counter(notifier_for(r.key.decode(), partitions, 2) for r in mine if r.key)

    async def read_their_share() -> list[float]:
        """Each counter's growth, once both have grown by their instance's records (else [])."""
        grown = [after - b for after, b in zip(await counters(), before, strict=True)]
        return grown if all(grown[i] >= produced[i] for i in range(2)) else []

    grown = await wait_for(
        read_their_share, timeout=30, interval=0.5, message=f"each notifier reads {produced}"
    )
    total = sum(grown)
    assert total >= sum(produced.values())
    for i in range(2):
        assert 0 < grown[i] <= 0.75 * total, (grown, produced)
