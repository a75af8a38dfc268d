"""Webhooks through the whole system: a local receiver on 127.0.0.1 (allow-listed by the
setting) gets each job's final event signed per Standard Webhooks, verified here by the
`standardwebhooks` package, once by id, though it was down and the results service was
killed in between; private addresses are refused at submit and at delivery."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from deploy.localstack.procs import free_port
from deploy.localstack.stack import Ports, Stack
from shared.auth import issue_token
from tests.conftest import STATE
from tests.e2e.conftest import running_system
from tests.e2e.test_pipeline import submit
from tests.support import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]

# Tries 1 s, 2 s, then every 3 s: a minute of outage is some twenty tries, not hours.
FAST_RETRIES = {"WEBHOOK_SCHEDULE_S": "1,2,3", "WEBHOOK_WINDOW_S": "900"}


class Receiver:
    """A webhook receiver as a user would write one: verify, deduplicate by webhook-id."""

    def __init__(self, port: int, secret: str) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/hook"
        self.verifier = Webhook(secret)
        self.status = 204  # what it answers; 503 while "down but listening"
        self.received: dict[str, dict[str, Any]] = {}  # webhook-id -> the event, first seen
        self.posts: list[tuple[str, int]] = []  # (webhook-id, the answer), every POST
        self.bad_signatures = 0
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            event = self.verifier.verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.bad_signatures += 1
            return web.Response(status=400)
        webhook_id = request.headers["webhook-id"]
        self.posts.append((webhook_id, self.status))
        if self.status < 300:
            self.received.setdefault(webhook_id, event)
        return web.Response(status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def get_json(url: str, token: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        return resp.status, await resp.json()


async def webhook_secret(base: str, token: str) -> str:
    status, body = await get_json(f"{base}/api/v1/webhook/secret", token)
    assert status == 200, body
    secret: str = body["secret"]
    return secret


async def deliveries(base: str, token: str, job_id: str) -> list[dict[str, Any]]:
    status, body = await get_json(f"{base}/api/v1/jobs/{job_id}/webhooks", token)
    if status == 404:
        return []  # not stored yet
    assert status == 200, body
    found: list[dict[str, Any]] = body["deliveries"]
    return found


async def cancel(base: str, token: str, job_id: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{base}/api/v1/jobs/{job_id}/cancel", headers={"Authorization": f"Bearer {token}"}
        ) as resp,
    ):
        assert resp.status in (200, 202), await resp.text()


@pytest.fixture
def hooks_system(
    kafka_bootstrap: str, database_url: str, topic_prefix: str, test_state_dir: Path
) -> Iterator[Stack]:
    env = {**FAST_RETRIES, "WEBHOOK_ALLOW": "127.0.0.1/32"}
    with running_system(
        test_state_dir, kafka_bootstrap, database_url, topic_prefix=topic_prefix, env=env
    ) as stack:
        yield stack


@pytest.mark.timeout(420)
async def test_a_receiver_down_for_a_minute_gets_every_final_event_once_by_id(
    hooks_system: Stack,
) -> None:
    system = hooks_system
    base = system.urls()["gateway"]
    token = issue_token(system.auth_secret(), "alice")
    receiver = Receiver(free_port(), await webhook_secret(base, token))
    # Down: nothing listens on its port.
    hook = {"webhook_url": receiver.url}
    started = time.monotonic()
    completed = (await submit(base, token, prompt="Say hello.", **hook))["job_id"]
    failed = (await submit(base, token, prompt="Break. [[sim fail=400]]", **hook))["job_id"]
    cancelled = (
        await submit(base, token, prompt="Go on and on. [[sim tokens=2000 tps=20]]", **hook)
    )["job_id"]
    await cancel(base, token, cancelled)
    expected = {
        f"msg_{completed}_completed": ("job.completed", completed),
        f"msg_{failed}_failed": ("job.failed", failed),
        f"msg_{cancelled}_cancelled": ("job.cancelled", cancelled),
    }

    async def tried_twice_each() -> bool:
        for job_id in (completed, failed, cancelled):
            found = await deliveries(base, token, job_id)
            if not found or found[0]["attempts"] < 2:
                return False
        return True

    await wait_for(tried_twice_each, timeout=60, message="every delivery tried twice, refused")
    # The deliverer dies with tries scheduled on the retry topic and held in memory.
    system.processes["results"].kill()
    system.start_service("results")
    await asyncio.sleep(max(0.0, 30 - (time.monotonic() - started)))
    receiver.status = 503  # listening now, but failing
    await receiver.start()
    try:
        await wait_for(
            lambda: {i for i, s in receiver.posts if s == 503} >= set(expected),
            timeout=60,
            message="every delivery answered 503 at least once",
        )
        await asyncio.sleep(max(0.0, 60 - (time.monotonic() - started)))
        receiver.status = 204
        await wait_for(
            lambda: set(receiver.received) == set(expected),
            timeout=60,
            message=f"every final event delivered; got {sorted(receiver.received)}",
        )
    finally:
        await receiver.stop()

    assert receiver.bad_signatures == 0
    for webhook_id, (event_type, job_id) in expected.items():
        event = receiver.received[webhook_id]
        assert (event["type"], event["job_id"]) == (event_type, job_id)
    assert receiver.received[f"msg_{completed}_completed"]["data"]["response"]
    assert "400" in receiver.received[f"msg_{failed}_failed"]["data"]["reason"]

    # The tries are on the job: refused connections, 503s, then the 204; nothing after.
    for job_id in (completed, failed, cancelled):
        (delivery,) = await wait_for(
            lambda job_id=job_id: _delivered(base, token, job_id),
            timeout=10,
            message=f"the delivery of {job_id} recorded as delivered",
        )
        log = delivery["attempt_log"]
        assert [t["attempt"] for t in log] == list(range(1, len(log) + 1))
        assert log[0]["status_code"] is None and log[0]["error"]
        assert log[0]["next_attempt_at"] is not None
        assert 503 in [t["status_code"] for t in log]
        assert log[-1]["status_code"] == 204 and log[-1]["next_attempt_at"] is None
        assert delivery["url"] == receiver.url and delivery["attempts"] == len(log)
        first = log[0]["attempted_at"]
        assert delivery["first_attempt_at"].replace("Z", "+00:00")[:19] == first[:19]

    # Another user sees none of it.
    bob = issue_token(system.auth_secret(), "bob")
    status, _ = await get_json(f"{base}/api/v1/jobs/{completed}/webhooks", bob)
    assert status == 404


async def _delivered(base: str, token: str, job_id: str) -> list[dict[str, Any]] | None:
    found = await deliveries(base, token, job_id)
    return found if found and all(d["status"] == "delivered" for d in found) else None


@pytest.fixture
def split_allow_system(
    kafka_bootstrap: str, database_url: str, topic_prefix: str, test_state_dir: Path
) -> Iterator[Stack]:
    """The gateway allows the name `localhost`; the results service allows nothing: what a
    name that resolved to a public address at submit and to a private one later looks like
    to the deliverer."""
    ports = Ports(
        **{n: free_port() for n in ("simulator", "gateway", "results", "notifier", "streamer")},
        notifier_sse=free_port(),
    )
    stack = Stack(
        state_dir=test_state_dir / f"system-{uuid.uuid4().hex[:6]}",
        cache_dir=STATE / "cache",
        ports=ports,
        kafka_bootstrap=kafka_bootstrap,
        database_url=database_url,
        topic_prefix=topic_prefix,
        extra_env={"SIM_TOKENS_PER_SECOND": "400", "SIM_TTFT_MS": "20", **FAST_RETRIES},
    )
    try:
        stack.start_simulator()
        for name in ("results", "streamer", "notifier"):
            stack.start_service(name)
        stack.start_service("gateway", WEBHOOK_ALLOW="localhost")
        yield stack
    finally:
        stack.stop()


@pytest.mark.timeout(180)
async def test_private_addresses_are_refused_at_submit_and_at_delivery(
    split_allow_system: Stack,
) -> None:
    system = split_allow_system
    base = system.urls()["gateway"]
    token = issue_token(system.auth_secret(), "alice")
    for url in (
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://127.0.0.1:9/hook",
        "http://[::1]:9/hook",
        "https://192.168.0.10/hook",
    ):
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{base}/api/v1/jobs",
                json={"prompt": "hi", "webhook_url": url},
                headers={"Authorization": f"Bearer {token}"},
            ) as resp,
        ):
            body = await resp.json()
            assert resp.status == 422, (url, body)
            assert body["type"].endswith("webhook-url-refused"), body
            assert body["errors"][0]["loc"] == ["body", "webhook_url"]
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{base}/api/v1/jobs",
            json={"prompt": "hi", "webhook_url": "gopher://example.com/"},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp,
    ):
        assert resp.status == 422

    receiver = Receiver(free_port(), await webhook_secret(base, token))
    await receiver.start()
    try:
        url = f"http://localhost:{receiver.port}/hook"
        job_id = (await submit(base, token, prompt="Say hello.", webhook_url=url))["job_id"]

        async def failed() -> list[dict[str, Any]] | None:
            found = await deliveries(base, token, job_id)
            return found if found and found[0]["status"] == "failed" else None

        (delivery,) = await wait_for(
            failed, timeout=60, message="the delivery to localhost recorded as refused"
        )
        await asyncio.sleep(3)  # a retry would have come by now (the schedule's 1 s, 2 s)
        assert receiver.posts == []
    finally:
        await receiver.stop()
    (attempt,) = (await deliveries(base, token, job_id))[0]["attempt_log"]
    assert attempt["status_code"] is None and attempt["next_attempt_at"] is None
    assert "refused" in attempt["error"] and "loopback" in attempt["error"], attempt
    assert delivery["webhook_id"] == f"msg_{job_id}_completed"
    assert json.dumps(delivery)  # the view is plain JSON


async def put_default(base: str, token: str, url: str | None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.put(
            f"{base}/api/v1/webhook",
            json={"url": url},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp,
    ):
        return resp.status, await resp.json()


@pytest.mark.timeout(180)
async def test_a_users_default_webhook_receives_the_jobs_submitted_without_one(
    hooks_system: Stack,
) -> None:
    system = hooks_system
    base = system.urls()["gateway"]
    token = issue_token(system.auth_secret(), "carol")
    receiver = Receiver(free_port(), await webhook_secret(base, token))
    status, body = await put_default(base, token, "http://10.0.0.1/hook")
    assert status == 422 and body["type"].endswith("webhook-url-refused"), body
    assert await get_json(f"{base}/api/v1/webhook", token) == (200, {"url": None})

    assert await put_default(base, token, receiver.url) == (200, {"url": receiver.url})
    assert await get_json(f"{base}/api/v1/webhook", token) == (200, {"url": receiver.url})
    await receiver.start()
    try:
        job_id = (await submit(base, token, prompt="Say hello."))["job_id"]
        webhook_id = f"msg_{job_id}_completed"
        await wait_for(
            lambda: webhook_id in receiver.received,
            timeout=60,
            message="the job's final event at the user's default webhook",
        )
        # Cleared: the next job has no webhook.
        assert await put_default(base, token, None) == (200, {"url": None})
        quiet = (await submit(base, token, prompt="Say hello again."))["job_id"]
        await wait_for(
            lambda: _finished(base, token, quiet), timeout=60, message="the second job stored"
        )
        await asyncio.sleep(2)
        assert await deliveries(base, token, quiet) == []
    finally:
        await receiver.stop()
    assert set(receiver.received) == {webhook_id}
    # Another user's default is their own.
    status, body = await get_json(
        f"{base}/api/v1/webhook", issue_token(system.auth_secret(), "dan")
    )
    assert (status, body) == (200, {"url": None})


async def _finished(base: str, token: str, job_id: str) -> bool:
    status, _ = await get_json(f"{base}/api/v1/jobs/{job_id}/result", token)
    return status == 200
