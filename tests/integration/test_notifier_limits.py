"""Caps, scopes and the default bind: what a client past its rights or the notifier's room gets."""

from __future__ import annotations

import json

import aiohttp
import pytest
from websockets.asyncio.client import connect

from services.notifier.settings import NotifierSettings
from tests.integration.notifier_support import (
    closed_with,
    next_of,
    notifier_settings,
    open_ws,
    publisher,
    running_notifier,
    subscribe,
    token,
    words,
    ws_url,
)

pytestmark = pytest.mark.kafka


async def test_process_cap_counts_unauthenticated_sockets_and_closes_the_next_with_1013(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    settings = notifier_settings(
        kafka_bootstrap, topic_prefix, auth_secret, notifier_max_connections=2
    )
    async with running_notifier(settings) as service, aiohttp.ClientSession() as http:
        url = ws_url(service)
        silent = await connect(url)  # never authenticates: still takes room
        authed = await open_ws(url, token(auth_secret, "alice"))
        async with connect(url) as third:
            third_code = await closed_with(third)
        sse = f"http://127.0.0.1:{service.sse_port}/api/v1/jobs/some-job/events"
        async with http.get(sse, params={"token": token(auth_secret, "bob")}) as resp:
            sse_status, sse_body = resp.status, await resp.json(content_type=None)
            retry_after = resp.headers.get("Retry-After")
        refused = service.registry.get_sample_value(
            "streamjobs_notifier_connections_refused_total", {"reason": "process_cap"}
        )
        await silent.close()
        # Room again once a socket goes: a new client is served.
        async with connect(url) as again:
            await again.send(json.dumps({"type": "auth", "token": token(auth_secret, "carol")}))
            welcome = await next_of(again, "authenticated", "error")
        await authed.close()

    assert third_code == 1013
    assert sse_status == 503 and sse_body["status"] == 503 and retry_after
    assert refused == 2
    assert welcome["type"] == "authenticated"


async def test_unauthenticated_socket_is_closed_4001_after_the_auth_timeout_freeing_its_room(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    settings = notifier_settings(
        kafka_bootstrap,
        topic_prefix,
        auth_secret,
        notifier_max_connections=1,
        notifier_auth_timeout_s=0.5,
    )
    async with running_notifier(settings) as service:
        async with connect(ws_url(service)) as silent:
            code = await closed_with(silent)
        ws = await open_ws(ws_url(service), token(auth_secret, "alice"))
        await ws.close()
    assert code == 4001


async def test_per_user_cap_closes_the_users_next_socket_with_4029_and_sse_answers_429(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    settings = notifier_settings(
        kafka_bootstrap, topic_prefix, auth_secret, notifier_max_connections_per_user=2
    )
    async with (
        running_notifier(settings) as service,
        publisher(kafka_bootstrap, topic_prefix) as pub,
        aiohttp.ClientSession() as http,
    ):
        job_id = await pub.job("alice", words(3))
        url = ws_url(service)
        alice = [await open_ws(url, token(auth_secret, "alice")) for _ in range(2)]
        async with connect(url) as third:
            await third.send(json.dumps({"type": "auth", "token": token(auth_secret, "alice")}))
            refusal = await next_of(third, "error", "authenticated")
            code = await closed_with(third)
        sse = f"http://127.0.0.1:{service.sse_port}/api/v1/jobs/{job_id}/events"
        async with http.get(sse, params={"token": token(auth_secret, "alice")}) as resp:
            sse_status, sse_body = resp.status, await resp.json(content_type=None)
        # Another user is not held back by alice's sockets.
        bob = await open_ws(url, token(auth_secret, "bob"))
        await bob.close()
        await alice[0].close()
        await alice[0].wait_closed()
        async with http.get(sse, params={"token": token(auth_secret, "alice")}) as resp:
            freed_status = resp.status
            await resp.read()
        await alice[1].close()

    assert refusal["code"] == "too_many_connections"
    assert code == 4029
    assert sse_status == 429 and sse_body["status"] == 429
    assert freed_status == 200


async def test_token_without_jobs_read_is_closed_4403_and_sse_answers_403(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    settings = notifier_settings(kafka_bootstrap, topic_prefix, auth_secret)
    write_only = token(auth_secret, "alice", "jobs:write")
    async with (
        running_notifier(settings) as service,
        publisher(kafka_bootstrap, topic_prefix) as pub,
        aiohttp.ClientSession() as http,
    ):
        job_id = await pub.job("alice", words(3))
        async with connect(ws_url(service)) as ws:
            await ws.send(json.dumps({"type": "auth", "token": write_only}))
            refusal = await next_of(ws, "error", "authenticated")
            code = await closed_with(ws)
        sse = f"http://127.0.0.1:{service.sse_port}/api/v1/jobs/{job_id}/events"
        async with http.get(sse, headers={"Authorization": f"Bearer {write_only}"}) as resp:
            sse_status, sse_body = resp.status, await resp.json(content_type=None)
        # The same user with jobs:read reads the job.
        reader = await open_ws(ws_url(service), token(auth_secret, "alice", "jobs:read"))
        await subscribe(reader, job_id)
        subscribed = await next_of(reader, "subscribed", "error")
        await reader.close()

    assert refusal["code"] == "insufficient_scope"
    assert code == 4403
    assert sse_status == 403 and "jobs:read" in sse_body["detail"]
    assert subscribed["type"] == "subscribed"


@pytest.mark.parametrize(
    "bad",
    [
        "sj1.é.é",
        "sj1." + "A" * 5000 + ".x",  # past the 4096 allowed, within an HTTP line
        "sj1.\u0000.\u0000",
        "sj1.eyJzdWIiOjF9.bad",
        "\ud800",
    ],
    ids=["non-ascii", "oversize", "nul", "wrong-payload", "lone-surrogate"],
)
async def test_garbage_tokens_close_4001_and_sse_answers_401(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str, bad: str
) -> None:
    settings = notifier_settings(kafka_bootstrap, topic_prefix, auth_secret)
    async with running_notifier(settings) as service, aiohttp.ClientSession() as http:
        async with connect(ws_url(service)) as ws:
            await ws.send(json.dumps({"type": "auth", "token": bad}))
            refusal = await next_of(ws, "error", "authenticated")
            code = await closed_with(ws)
        sse = f"http://127.0.0.1:{service.sse_port}/api/v1/jobs/j/events"
        async with http.get(sse, params={"token": bad}) as resp:
            sse_status = resp.status
        # Still serving.
        ws = await open_ws(ws_url(service), token(auth_secret, "alice"))
        await ws.close()
    assert refusal["code"] == "bad_token"
    assert code == 4001
    assert sse_status == 401


async def test_both_ports_bind_loopback_unless_told_otherwise(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    settings = NotifierSettings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=topic_prefix,
        streamjobs_auth_secret=auth_secret,
        notifier_port=0,
        notifier_sse_port=0,
        log_json=False,
    )
    assert settings.notifier_host == "127.0.0.1"
    async with running_notifier(settings) as service:
        assert service._server is not None
        ws_hosts = {sock.getsockname()[0] for sock in service._server.sockets}
        ws = await open_ws(ws_url(service), token(auth_secret, "alice"))
        await ws.close()
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{service.sse_port}/healthz") as resp,
        ):
            sse_ok = resp.status
    assert ws_hosts == {"127.0.0.1"}
    assert sse_ok == 200
