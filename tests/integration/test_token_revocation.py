"""A token revoked while the services run is refused by the gateway, results and notifier
within seconds; a service started later refuses it from its first request."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from deploy.localstack.procs import free_port
from services.gateway.app import GatewayService
from services.gateway.app import create_service as create_gateway
from services.gateway.settings import GatewaySettings
from services.notifier.app import NotifierService
from services.notifier.app import create_service as create_notifier
from services.results.app import ResultsService
from services.results.app import create_service as create_results
from shared.auth import decode_token, issue_token
from shared.revocation import revoke
from tests.integration.notifier_support import notifier_settings
from tests.integration.results_kit import settings_for
from tests.support import wait_for

pytestmark = pytest.mark.kafka

REVOKED_WITHIN_S = 10.0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@asynccontextmanager
async def started(
    service: GatewayService | ResultsService | NotifierService,
) -> AsyncIterator[None]:
    await service.start()
    try:
        yield
    finally:
        await service.stop()


def gateway_for(bootstrap: str, prefix: str, secret: str) -> GatewayService:
    # No results service behind it: an accepted token gets 503 from the forward, a refused 401.
    return create_gateway(
        GatewaySettings(
            kafka_bootstrap_servers=bootstrap,
            topic_prefix=prefix,
            streamjobs_auth_secret=secret,
            gateway_host="127.0.0.1",
            gateway_port=0,
            results_url=f"http://127.0.0.1:{free_port()}",
            results_timeout_s=1,
        )
    )


class Probe:
    """Asks each service whether it accepts a token: True (accepted) or False (401)."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        gateway: GatewayService,
        results: ResultsService,
        notifier: NotifierService,
    ) -> None:
        self.http, self.gateway, self.results, self.notifier = http, gateway, results, notifier

    async def gateway_accepts(self, token: str) -> bool:
        async with self.http.get(f"{self.gateway.url}/api/v1/jobs", headers=bearer(token)) as r:
            return r.status != 401

    async def results_accepts(self, token: str) -> bool:
        url = f"http://127.0.0.1:{self.results.port}/api/v1/jobs"
        async with self.http.get(url, headers=bearer(token)) as r:
            assert r.status in (200, 401), r.status
            return r.status == 200

    async def notifier_ws_accepts(self, token: str) -> bool:
        async with connect(f"ws://127.0.0.1:{self.notifier.port}/ws") as ws:
            await ws.send(json.dumps({"type": "auth", "token": token}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            return bool(reply["type"] == "authenticated")

    async def notifier_sse_accepts(self, token: str) -> bool:
        url = f"http://127.0.0.1:{self.notifier.sse_port}/api/v1/jobs/nope/events"
        async with self.http.get(url, params={"token": token}) as r:
            return r.status != 401

    async def accepted_by(self, token: str) -> dict[str, bool]:
        return {
            "gateway": await self.gateway_accepts(token),
            "results": await self.results_accepts(token),
            "notifier_ws": await self.notifier_ws_accepts(token),
            "notifier_sse": await self.notifier_sse_accepts(token),
        }


async def test_token_revoked_while_services_run_is_refused_everywhere_within_seconds(
    kafka_bootstrap: str, topic_prefix: str, database_url: str, auth_secret: str
) -> None:
    gateway = gateway_for(kafka_bootstrap, topic_prefix, auth_secret)
    results = create_results(settings_for(kafka_bootstrap, topic_prefix, database_url, auth_secret))
    notifier = create_notifier(
        notifier_settings(kafka_bootstrap, topic_prefix, auth_secret), registry=CollectorRegistry()
    )
    doomed = issue_token(auth_secret, "alice")
    kept = issue_token(auth_secret, "alice")
    everywhere = {"gateway": True, "results": True, "notifier_ws": True, "notifier_sse": True}
    nowhere = dict.fromkeys(everywhere, False)
    async with AsyncExitStack() as stack:
        for service in (results, gateway, notifier):
            await stack.enter_async_context(started(service))
        http = await stack.enter_async_context(aiohttp.ClientSession())
        probe = Probe(http, gateway, results, notifier)
        # Used before the revocation: each service has it cached as valid.
        assert await probe.accepted_by(doomed) == everywhere
        live = await stack.enter_async_context(connect(f"ws://127.0.0.1:{notifier.port}/ws"))
        await live.send(json.dumps({"type": "auth", "token": doomed}))
        assert json.loads(await asyncio.wait_for(live.recv(), 10))["type"] == "authenticated"

        verified = decode_token(auth_secret, doomed)
        await revoke(
            kafka_bootstrap, topic_prefix, verified.principal.token_id, verified.expires_at
        )

        async def refused_everywhere() -> bool:
            return await probe.accepted_by(doomed) == nowhere

        await wait_for(
            refused_everywhere,
            timeout=REVOKED_WITHIN_S,
            interval=0.2,
            message="the revoked token refused by gateway, results and notifier",
        )
        assert await probe.accepted_by(kept) == everywhere
        # The connection it had opened is closed too, not left streaming.
        frame = json.loads(await asyncio.wait_for(live.recv(), REVOKED_WITHIN_S))
        assert frame["code"] == "token_revoked", frame
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(live.recv(), REVOKED_WITHIN_S)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001

        # A gateway started after the revocation has read it before serving.
        late = gateway_for(kafka_bootstrap, topic_prefix, auth_secret)
        await stack.enter_async_context(started(late))
        late_probe = Probe(http, late, results, notifier)
        assert not await late_probe.gateway_accepts(doomed)
        assert await late_probe.gateway_accepts(kept)


async def test_revoke_command_revokes_by_jti_and_make_token_prints_the_jti(
    kafka_bootstrap: str, topic_prefix: str, auth_secret: str
) -> None:
    env = {
        **os.environ,
        "STREAMJOBS_AUTH_SECRET": auth_secret,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "TOPIC_PREFIX": topic_prefix,
    }
    minted = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shared.token_cli",
        "bob",
        "--scopes",
        "jobs:read",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(minted.communicate(), 60)
    assert minted.returncode == 0, err
    token = out.decode().strip()
    jti = decode_token(auth_secret, token).principal.token_id
    assert f"jti={jti}" in err.decode()

    gateway = gateway_for(kafka_bootstrap, topic_prefix, auth_secret)
    async with started(gateway), aiohttp.ClientSession() as http:

        async def accepted() -> bool:
            async with http.get(f"{gateway.url}/api/v1/jobs", headers=bearer(token)) as r:
                return r.status != 401

        assert await accepted()
        revoking = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shared.token_cli",
            "revoke",
            jti,
            env=env,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(revoking.communicate(), 60)
        assert revoking.returncode == 0, err

        async def refused() -> bool:
            return not await accepted()

        await wait_for(
            refused, timeout=REVOKED_WITHIN_S, interval=0.2, message="the gateway refused it"
        )
