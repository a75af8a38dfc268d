"""Two notifier instances splitting the chunk partitions: each reads its share, sends clients on.

They run in this process (as its own process where one is killed) against the session broker,
on ports chosen before start so that each one's public URLs can be given to the other
(`NOTIFIER_PUBLIC_WS_URLS` / `_SSE_URLS`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection

from deploy.localstack.procs import free_port
from services.notifier.app import NotifierService
from services.notifier.settings import NotifierSettings
from shared.routing import notifier_for
from shared.topics import chunks_topic, events_topic
from tests.integration.notifier_support import (
    Publisher,
    Received,
    next_of,
    notifier_settings,
    open_ws,
    publisher,
    read_until,
    running_notifier,
    subscribe,
    token,
    words,
)
from tests.integration.test_notifier_resume import parse_sse
from tests.support import wait_for

pytestmark = pytest.mark.kafka

PARTITIONS = 4  # of each topic (the settings' default job_partitions)
ROOT = Path(__file__).resolve().parents[2]


def fleet_settings(
    bootstrap: str, prefix: str, secret: str, *, urls: bool = True, **overrides: Any
) -> list[NotifierSettings]:
    """Settings of two instances, on fixed free ports, each knowing the other's public URLs."""
    ports = [(free_port(), free_port()) for _ in range(2)]
    public: dict[str, Any] = {}
    if urls:
        public = {
            "notifier_public_ws_urls": ",".join(f"ws://127.0.0.1:{ws}/ws" for ws, _ in ports),
            "notifier_public_sse_urls": ",".join(f"http://127.0.0.1:{sse}" for _, sse in ports),
        }
    return [
        notifier_settings(
            bootstrap,
            prefix,
            secret,
            notifier_instance=i,
            notifier_instances=2,
            notifier_port=ws,
            notifier_sse_port=sse,
            **public,
            **overrides,
        )
        for i, (ws, sse) in enumerate(ports)
    ]


@asynccontextmanager
async def running_fleet(settings: list[NotifierSettings]) -> AsyncIterator[list[NotifierService]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(running_notifier(s)) for s in settings]


def job_of(instance: int) -> str:
    """A fresh job id whose chunks the given instance (of two) reads."""
    while True:
        job_id = str(uuid.uuid4())
        if notifier_for(job_id, PARTITIONS, 2) == instance:
            return job_id


def records(service: NotifierService, topic_of: Callable[[str], str]) -> float:
    """Records of one topic this instance read, from its own metrics."""
    labels = {"topic": topic_of(service.settings.topic_prefix)}
    return service.registry.get_sample_value("streamjobs_notifier_records_total", labels) or 0.0


async def stream(pub: Publisher, job_id: str, texts: list[str], moved: asyncio.Event) -> None:
    """Publish a job's chunks one by one, the second half only once the client moved."""
    half = len(texts) // 2
    for seq, text in enumerate(texts):
        if seq == half:
            await moved.wait()
        await pub.chunk(job_id, seq, text)
        await pub.flush()
    await pub.completed(job_id, texts)
    await pub.flush()


async def test_each_instance_reads_only_its_share_of_the_chunk_partitions(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    settings = fleet_settings(kafka_bootstrap, topic_prefix, auth_secret)
    jobs = [str(uuid.uuid4()) for _ in range(40)]
    texts = words(5)
    async with (
        running_fleet(settings) as fleet,
        publisher(kafka_bootstrap, topic_prefix) as pub,
    ):
        for job_id in jobs:
            await pub.accepted(job_id, "alice")
            await pub.chunks(job_id, texts)
            await pub.completed(job_id, texts)
        await pub.flush()
        total = len(jobs) * len(texts)
        await wait_for(
            lambda: (
                sum(records(s, chunks_topic) for s in fleet) >= total
                and all(records(s, events_topic) >= 2 * len(jobs) for s in fleet)
            ),
            message="the fleet did not read every chunk and every instance every event",
        )
        expected = [
            len(texts) * sum(1 for j in jobs if notifier_for(j, PARTITIONS, 2) == i)
            for i in range(2)
        ]
        counted = [records(s, chunks_topic) for s in fleet]
        owned = [s.registry.get_sample_value("streamjobs_notifier_owned_partitions") for s in fleet]
        foreign = [
            [j for j in s.hub.jobs if notifier_for(j, PARTITIONS, 2) != i]
            for i, s in enumerate(fleet)
        ]
    assert counted == expected, "an instance read chunks of partitions it does not own"
    assert all(0 < c < total for c in counted), "one instance read every chunk"
    assert owned == [2.0, 2.0]
    assert foreign == [[], []], "a job served elsewhere reached an instance's hub"


async def test_client_at_the_wrong_instance_is_redirected_and_gets_every_chunk_once(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    settings = fleet_settings(kafka_bootstrap, topic_prefix, auth_secret)
    texts = words(40)
    tok = token(auth_secret, "alice")
    job_id = job_of(1)
    async with (
        running_fleet(settings) as fleet,
        publisher(kafka_bootstrap, topic_prefix) as pub,
    ):
        await pub.accepted(job_id, "alice")
        await pub.flush()
        wrong = await open_ws(f"ws://127.0.0.1:{fleet[0].port}/ws", tok)
        await wrong.send(json.dumps({"type": "subscribe", "channel": "user:alice"}))
        await next_of(wrong, "subscribed")
        moved = asyncio.Event()
        streaming = asyncio.create_task(stream(pub, job_id, texts, moved))
        redirect, right = await follow_from(wrong, tok, job_id, -1)
        moved.set()  # half the chunks were (or are being) published while the client moved
        got = await read_until(right.ws, right.received)
        await streaming
        await right.ws.close()
        # The first connection stayed open: its user channel saw the job end there too.
        ended = await next_of(wrong, "event")
        while ended["event"] != "job.completed":
            ended = await next_of(wrong, "event")
        await wrong.close()
    assert redirect == {
        "type": "redirect",
        "channel": f"job:{job_id}",
        "job_id": job_id,
        "url": f"ws://127.0.0.1:{settings[1].notifier_port}/ws",
        "instance": 1,
    }
    assert got.seqs == list(range(len(texts))), "a gap or a duplicate across the redirect"
    assert got.text == "".join(texts)
    assert ended["job_id"] == job_id


async def test_subscribe_to_someone_elses_job_at_the_wrong_instance_is_refused_not_redirected(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    settings = fleet_settings(kafka_bootstrap, topic_prefix, auth_secret)
    job_id, unknown = job_of(1), job_of(1)
    async with (
        running_fleet(settings) as fleet,
        publisher(kafka_bootstrap, topic_prefix) as pub,
    ):
        await pub.accepted(job_id, "alice")
        await pub.flush()
        bob = await open_ws(f"ws://127.0.0.1:{fleet[0].port}/ws", token(auth_secret, "bob"))
        answers = []
        for ident in (job_id, unknown):
            await subscribe(bob, ident)
            answers.append(await next_of(bob, "redirect", "error", "subscribed"))
        await bob.close()
    assert [(a["type"], a.get("code"), a.get("channel")) for a in answers] == [
        ("error", "forbidden", f"job:{job_id}"),
        ("error", "forbidden", f"job:{unknown}"),
    ], "the refusal must not tell which instance serves a job the client may not see"


async def test_wrong_instance_without_the_owners_url_answers_a_wrong_instance_error(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    settings = fleet_settings(kafka_bootstrap, topic_prefix, auth_secret, urls=False)
    job_id = job_of(1)
    tok = token(auth_secret, "alice")
    async with (
        running_fleet(settings) as fleet,
        publisher(kafka_bootstrap, topic_prefix) as pub,
    ):
        await pub.accepted(job_id, "alice")
        await pub.flush()
        ws = await open_ws(f"ws://127.0.0.1:{fleet[0].port}/ws", tok)
        await subscribe(ws, job_id)
        answer = await next_of(ws, "redirect", "error", "subscribed")
        await ws.send(json.dumps({"type": "ping", "id": "still-open"}))
        pong = await next_of(ws, "pong")
        await ws.close()
    assert answer["type"] == "error"
    assert answer["code"] == "wrong_instance"
    assert answer["instance"] == 1 and answer["channel"] == f"job:{job_id}"
    assert pong["id"] == "still-open"


async def test_sse_at_the_wrong_instance_answers_307_keeping_path_and_resume_query(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    settings = fleet_settings(kafka_bootstrap, topic_prefix, auth_secret)
    texts = words(20)
    tok = token(auth_secret, "alice")
    async with (
        running_fleet(settings) as fleet,
        publisher(kafka_bootstrap, topic_prefix) as pub,
        aiohttp.ClientSession() as http,
    ):
        job_id = await pub.job("alice", texts, job_id=job_of(1))
        path = f"/api/v1/jobs/{job_id}/events"
        query = {"token": tok, "last_event_id": "1:9"}
        wrong = f"http://127.0.0.1:{fleet[0].sse_port}{path}"
        async with asyncio.timeout(20), http.get(wrong, params=query, allow_redirects=False) as r:
            status, location = r.status, r.headers.get("Location")
        async with asyncio.timeout(20), http.get(wrong, params=query) as followed:
            events = parse_sse(await followed.text())
        bob = {"token": token(auth_secret, "bob")}
        async with asyncio.timeout(20), http.get(wrong, params=bob, allow_redirects=False) as r:
            bob_status = r.status
    assert status == 307
    assert location == f"http://127.0.0.1:{settings[1].notifier_sse_port}{path}?" + (
        f"token={tok}&last_event_id=1:9"
    )
    seqs = [json.loads(e["data"])["seq"] for e in events if e.get("event") == "chunk"]
    assert seqs == list(range(10, len(texts))), "the resume point was lost in the redirect"
    assert events[-1]["event"] == "job.completed"
    assert bob_status == 404, "an unauthorised request must not learn where the job is served"


def spawn(settings: NotifierSettings) -> subprocess.Popen[bytes]:
    """The notifier as its own process, configured as `settings` say, so it can be killed."""
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "TOPIC_PREFIX": settings.topic_prefix,
        "STREAMJOBS_AUTH_SECRET": settings.streamjobs_auth_secret.get_secret_value(),
        "NOTIFIER_HOST": settings.notifier_host,
        "NOTIFIER_PORT": str(settings.notifier_port),
        "NOTIFIER_SSE_PORT": str(settings.notifier_sse_port),
        "NOTIFIER_INSTANCE": str(settings.notifier_instance),
        "NOTIFIER_INSTANCES": str(settings.notifier_instances),
        "NOTIFIER_PUBLIC_WS_URLS": settings.notifier_public_ws_urls,
        "NOTIFIER_PUBLIC_SSE_URLS": settings.notifier_public_sse_urls,
        "LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen(  # a child we watch and kill, not awaited I/O
        [sys.executable, "-m", "services.notifier"], cwd=ROOT, env=env
    )


async def ready(port: int) -> bool:
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/readyz") as resp,
        ):
            return resp.status == 200
    except aiohttp.ClientError:
        return False


@asynccontextmanager
async def notifier_process(settings: NotifierSettings) -> AsyncIterator[subprocess.Popen[bytes]]:
    proc = spawn(settings)
    try:
        await wait_for(
            lambda: proc.poll() is not None or ready(settings.notifier_port),
            timeout=60,
            message=f"notifier instance {settings.notifier_instance} ready",
        )
        assert proc.poll() is None, f"the notifier exited with {proc.returncode}"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        await asyncio.to_thread(proc.wait, 10)


async def test_killed_instance_restarted_serves_its_partitions_again_and_a_client_resumes_gap_free(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    settings = fleet_settings(kafka_bootstrap, topic_prefix, auth_secret)
    texts = words(50)
    tok = token(auth_secret, "alice")
    job_id = job_of(1)
    async with (
        running_notifier(settings[0]) as other,
        publisher(kafka_bootstrap, topic_prefix) as pub,
    ):
        await pub.accepted(job_id, "alice")
        await pub.chunks(job_id, texts[:20])
        await pub.flush()
        async with notifier_process(settings[1]) as owner:
            ws = await open_ws(f"ws://127.0.0.1:{settings[1].notifier_port}/ws", tok)
            await subscribe(ws, job_id)
            got = await read_until(ws, Received(), chunks=20)
            owner.send_signal(signal.SIGKILL)
            await asyncio.to_thread(owner.wait, 10)
        # The owner is dead; the job streams on meanwhile, and nobody else reads its partition.
        await pub.chunks(job_id, texts, start=20)
        await pub.flush()
        async with notifier_process(settings[1]):
            # The client lands on the other instance and is sent back to the restarted one.
            landed = await open_ws(f"ws://127.0.0.1:{other.port}/ws", tok)
            redirect, resumed = await follow_from(landed, tok, job_id, got.last_seq)
            await landed.close()
            await pub.completed(job_id, texts)
            await pub.flush()
            await read_until(resumed.ws, resumed.received)
            await resumed.ws.close()
        assert job_id not in other.hub.jobs
    assert redirect["instance"] == 1
    got.chunks += resumed.received.chunks
    assert got.seqs == list(range(len(texts))), "a gap or a duplicate across the restart"
    assert got.text == "".join(texts)
    assert resumed.received.final is not None


class Resumed:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.received = Received()


async def follow_from(
    ws: ClientConnection, tok: str, job_id: str, last_seq: int
) -> tuple[dict[str, Any], Resumed]:
    """Subscribe where a client happens to land, follow the redirect, resume after last_seq."""
    await subscribe(ws, job_id, last_seq=last_seq, attempt=1)
    redirect = await next_of(ws, "redirect", "error", "subscribed")
    assert redirect["type"] == "redirect", redirect
    resumed = Resumed(await open_ws(redirect["url"], tok))
    await subscribe(resumed.ws, job_id, last_seq=last_seq, attempt=1)
    return redirect, resumed
