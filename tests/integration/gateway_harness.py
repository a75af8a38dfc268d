"""Fixtures and helpers of the gateway's integration tests: in-process gateways, tokens, topics.

A test module imports `kit` (and names it in `__all__`, as pytest finds fixtures by module
attribute) and takes one `kit: GatewayKit` in place of the fixtures it bundles.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer

from deploy.localstack.procs import free_port
from services.gateway.app import GatewayService, create_service
from services.gateway.settings import GatewaySettings
from shared.auth import DEFAULT_SCOPES, issue_token
from shared.contracts import parse_record
from shared.topics import all_topics
from tests.support import wait_for

StartGateway = Callable[..., Awaitable[GatewayService]]
Tokens = Callable[..., str]
ROOT = Path(__file__).resolve().parents[2]
# What every test gateway shares: each its own name (reply routing, logs); a lost owner's
# partitions move quickly.
SESSION_TIMEOUT_MS = 6_000
ADMISSION_PARTITIONS = 4


@contextlib.asynccontextmanager
async def gateways(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> AsyncIterator[StartGateway]:
    """Starts in-process gateways on the test's topics; stops them all at the end."""
    started: list[GatewayService] = []
    nobody = f"http://127.0.0.1:{free_port()}"  # no results service unless a test gives one

    async def start(**overrides: Any) -> GatewayService:
        values: dict[str, Any] = {
            "kafka_bootstrap_servers": kafka_bootstrap,
            "topic_prefix": topic_prefix,
            "streamjobs_auth_secret": auth_secret,
            "gateway_port": 0,
            "gateway_host": "127.0.0.1",
            "results_url": nobody,
            "results_timeout_s": 5,
            "gateway_public_ws_url": "ws://127.0.0.1:1/ws",
            "gateway_instance_id": f"gateway-{len(started)}",
            "gateway_admission_session_timeout_ms": SESSION_TIMEOUT_MS,
            "gateway_admission_partitions": ADMISSION_PARTITIONS,
            **overrides,
        }
        service = create_service(GatewaySettings(**values))
        await service.start()
        started.append(service)
        return service

    try:
        yield start
    finally:
        for service in reversed(started):
            await service.stop()


class GatewayProcess(NamedTuple):
    """A gateway in a process of its own: one a test can kill -9."""

    popen: subprocess.Popen[bytes]
    url: str


@contextlib.asynccontextmanager
async def gateway_process(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str, *, instance: str, **env: str
) -> AsyncIterator[GatewayProcess]:
    """`python -m services.gateway` on the test's topics, ready; killed at the end."""
    port = free_port()
    settings = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "TOPIC_PREFIX": topic_prefix,
        "STREAMJOBS_AUTH_SECRET": auth_secret,
        "GATEWAY_PORT": str(port),
        "GATEWAY_HOST": "127.0.0.1",
        "RESULTS_URL": f"http://127.0.0.1:{free_port()}",
        "GATEWAY_PUBLIC_WS_URL": "ws://127.0.0.1:1/ws",
        "GATEWAY_INSTANCE_ID": instance,
        "GATEWAY_ADMISSION_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
        "GATEWAY_ADMISSION_PARTITIONS": str(ADMISSION_PARTITIONS),
        **env,
    }
    popen = _spawn({**os.environ, **settings})
    url = f"http://127.0.0.1:{port}"
    try:

        async def ready() -> bool:
            try:
                async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(ready, timeout=60, message=f"gateway process {instance} ready")
        yield GatewayProcess(popen, url)
    finally:
        if popen.poll() is None:
            popen.kill()
        await asyncio.to_thread(popen.wait, 30)


def _spawn(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "services.gateway"], cwd=ROOT, env=env)


def token_maker(auth_secret: str) -> Tokens:
    def make(user_id: str, scopes: tuple[str, ...] = DEFAULT_SCOPES) -> str:
        return issue_token(auth_secret, user_id, scopes)

    return make


@pytest.fixture
async def start_gateway(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> AsyncIterator[StartGateway]:
    async with gateways(kafka_bootstrap, topic_prefix, auth_secret) as start:
        yield start


@pytest.fixture
def tokens(auth_secret: str) -> Tokens:
    return token_maker(auth_secret)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class GatewayKit(NamedTuple):
    """What nearly every gateway test takes: unpack it as the fixtures it stands for."""

    start_gateway: StartGateway
    tokens: Tokens
    http: aiohttp.ClientSession
    kafka_bootstrap: str
    topic_prefix: str


@pytest.fixture
async def kit(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> AsyncIterator[GatewayKit]:
    """The fixtures of a gateway test in one: it needs no other imported fixture."""
    async with (
        gateways(kafka_bootstrap, topic_prefix, auth_secret) as start,
        aiohttp.ClientSession() as http,
    ):
        yield GatewayKit(start, token_maker(auth_secret), http, kafka_bootstrap, topic_prefix)


async def post_job(
    http: aiohttp.ClientSession, url: str, token: str, body: dict[str, Any], **headers: str
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Submit `body`: the status, the JSON answer and the answer's headers."""
    async with http.post(f"{url}/api/v1/jobs", json=body, headers=bearer(token, **headers)) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


async def topic_records(bootstrap: str, prefix: str) -> dict[str, list[Any]]:
    """Every record on every streamjobs topic of `prefix`, parsed, read up to the end offsets."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # What consumers see: records of an aborted transaction never happened.
        isolation_level="read_committed",
    )
    consumer.subscribe(all_topics(prefix))  # no group: every partition is assigned
    await consumer.start()
    try:
        topics = len(all_topics(prefix))
        await wait_for(
            lambda: len({tp.topic for tp in consumer.assignment()}) == topics,
            message=f"partitions of the {prefix} topics",
        )
        tps = sorted(consumer.assignment())
        # By hand from here: a subscription is re-assigned (positions lost) on metadata changes.
        consumer.unsubscribe()
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: dict[str, list[Any]] = {topic: [] for topic in all_topics(prefix)}
        left = {tp for tp in tps if ends[tp] > 0}
        while left:
            batch = await consumer.getmany(*left, timeout_ms=1000)
            for tp, records in batch.items():
                out[tp.topic].extend(
                    (parse_record(r.value or b""), dict(r.headers)) for r in records
                )
            # A transaction marker takes an offset too: the position says when one is done.
            for tp in list(left):
                if await consumer.position(tp) >= ends[tp]:
                    left.discard(tp)
        return out
    finally:
        await consumer.stop()
