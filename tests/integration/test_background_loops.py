"""A background loop that dies while its service runs turns that service's /readyz to 503."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from deploy.localstack.procs import free_port
from services.gateway.app import create_service as create_gateway
from services.gateway.settings import GatewaySettings
from services.notifier.app import create_service as create_notifier
from services.results.app import create_service as create_results
from services.streamer.app import create_service as create_streamer
from services.streamer.settings import StreamerSettings
from shared.runtime import BackgroundTasks
from tests.integration.notifier_support import notifier_settings
from tests.integration.results_kit import settings_for
from tests.support import wait_for

pytestmark = pytest.mark.kafka


class Running:
    """What the test needs of a started service: its loops and its ops port."""

    def __init__(self, background: BackgroundTasks, ops_port: int) -> None:
        self.background = background
        self.ops_port = ops_port


Launch = Callable[[str, str, str, str], AbstractAsyncContextManager[Running]]


@asynccontextmanager
async def gateway(bootstrap: str, prefix: str, secret: str, _db: str) -> AsyncIterator[Running]:
    service = create_gateway(
        GatewaySettings(
            kafka_bootstrap_servers=bootstrap,
            topic_prefix=prefix,
            streamjobs_auth_secret=secret,
            gateway_host="127.0.0.1",
            gateway_port=0,
            results_url=f"http://127.0.0.1:{free_port()}",
        )
    )
    await service.start()
    try:
        yield Running(service.background, service.port)
    finally:
        await service.stop()


@asynccontextmanager
async def results(bootstrap: str, prefix: str, secret: str, db: str) -> AsyncIterator[Running]:
    service = create_results(settings_for(bootstrap, prefix, db, secret))
    await service.start()
    try:
        yield Running(service.background, service.port)
    finally:
        await service.stop()


@asynccontextmanager
async def notifier(bootstrap: str, prefix: str, secret: str, _db: str) -> AsyncIterator[Running]:
    service = create_notifier(
        notifier_settings(bootstrap, prefix, secret), registry=CollectorRegistry()
    )
    await service.start()
    try:
        yield Running(service.background, service.sse_port)
    finally:
        await service.stop()


@asynccontextmanager
async def streamer(bootstrap: str, prefix: str, secret: str, _db: str) -> AsyncIterator[Running]:
    service = create_streamer(
        StreamerSettings(
            kafka_bootstrap_servers=bootstrap,
            topic_prefix=prefix,
            streamjobs_auth_secret=secret,
            streamer_port=0,
            openai_base_url=f"http://127.0.0.1:{free_port()}/v1",  # no job runs here
            streamer_group_id=f"{prefix}-streamer",
            streamer_retry_group_id=f"{prefix}-streamer-retry",
            streamer_session_timeout_ms=6000,
            streamer_heartbeat_interval_ms=500,
        )
    )
    await service.start()
    try:
        yield Running(service.background, service.port)
    finally:
        await service.stop()


async def readyz(http: aiohttp.ClientSession, port: int) -> tuple[int, dict[str, Any]]:
    async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
        return resp.status, await resp.json()


async def crash_on_request(go: asyncio.Event) -> None:
    await go.wait()
    raise RuntimeError("a loop's unexpected failure")


@pytest.mark.parametrize("launch", [gateway, results, notifier, streamer], ids=lambda f: f.__name__)
async def test_a_crashed_background_loop_turns_readyz_to_503(
    launch: Launch, kafka_bootstrap: str, topic_prefix: str, database_url: str, auth_secret: str
) -> None:
    async with (
        launch(kafka_bootstrap, topic_prefix, auth_secret, database_url) as service,
        aiohttp.ClientSession() as http,
    ):

        async def ready() -> bool:
            return (await readyz(http, service.ops_port))[0] == 200

        await wait_for(ready, timeout=30, message="the service became ready")
        go = asyncio.Event()
        service.background.spawn(crash_on_request(go), name="doomed-loop")
        assert (await readyz(http, service.ops_port))[0] == 200
        go.set()
        async with asyncio.timeout(10):
            await service.background.died.wait()
        status, body = await readyz(http, service.ops_port)
        assert status == 503
        assert body["checks"]["background_loops"] is False
        assert service.background.dead == ["doomed-loop"]


async def test_the_notifiers_own_reader_loop_dying_turns_readyz_to_503(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    """Not only an added loop: the Kafka reader itself, its consumer pulled from under it."""
    service = create_notifier(
        notifier_settings(kafka_bootstrap, topic_prefix, auth_secret), registry=CollectorRegistry()
    )
    await service.start()
    try:
        async with aiohttp.ClientSession() as http:
            assert (await readyz(http, service.sse_port))[0] == 200
            assert service.reader is not None
            await service.reader.consumer.stop()
            async with asyncio.timeout(10):
                await service.background.died.wait()
            status, body = await readyz(http, service.sse_port)
            assert status == 503, body
            assert service.background.dead == ["Reader.run"]
    finally:
        await service.stop()
