"""The doctor's checks that talk to the machine and the running system."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

import aiohttp
import asyncpg
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from deploy.doctor.report import (
    Check,
    LiveStream,
    java_check,
    progress_line,
    python_check,
    readyz_check,
    round_trip_verdict,
    topics_check,
)
from deploy.doctor.settings import DoctorSettings
from shared.kafka import client_options
from shared.topics import all_topics

Say = Callable[[str], None]
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)


def check_python() -> Check:
    v = sys.version_info
    return python_check((v.major, v.minor, v.micro))


def check_java() -> Check:
    exe = shutil.which("java")
    if exe is None:
        return java_check(None)
    try:
        done = subprocess.run(  # a fixed executable, no shell
            [exe, "-version"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return java_check(f"java -version failed: {exc}")
    return java_check(done.stderr + done.stdout)


async def check_kafka(settings: DoctorSettings) -> list[Check]:
    bootstrap = settings.kafka_bootstrap_servers
    expected = all_topics(settings.topic_prefix)
    admin = AIOKafkaAdminClient(
        **client_options(settings), bootstrap_servers=bootstrap, request_timeout_ms=5000
    )
    try:
        async with asyncio.timeout(15):
            await admin.start()
            try:
                names = set(await admin.list_topics())
                present = [t for t in expected if t in names]
                described = await admin.describe_topics(present) if present else []
            finally:
                await admin.close()
    except (KafkaError, OSError, TimeoutError) as exc:
        return [
            Check(
                "Kafka reachable",
                False,
                f"{bootstrap}: {exc!r}",
                "start the stack (make run) or point KAFKA_BOOTSTRAP_SERVERS at a broker",
            )
        ]
    partitions = {t["topic"]: len(t["partitions"]) for t in described if t.get("error_code") == 0}
    return [
        Check("Kafka reachable", True, f"{bootstrap}, {len(names)} topics in its metadata"),
        topics_check(settings.topic_prefix, expected, partitions),
    ]


async def check_postgres(settings: DoctorSettings) -> Check | None:
    if not settings.database_url:
        return None
    shown = settings.database_url.split("@")[-1]  # never print a password
    try:
        conn = await asyncpg.connect(settings.database_url, timeout=5)
        try:
            version = await conn.fetchval("SHOW server_version")
        finally:
            await conn.close()
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return Check(
            "PostgreSQL reachable",
            False,
            f"{shown}: {exc!r}",
            "check DATABASE_URL; make run starts an embedded server",
        )
    return Check("PostgreSQL reachable", True, f"{shown}, server {version}")


async def check_llm(http: aiohttp.ClientSession, settings: DoctorSettings) -> Check:
    url = settings.openai_base_url.rstrip("/") + "/models"
    hint = "check OPENAI_BASE_URL and OPENAI_API_KEY; make run starts the simulator on :8090"
    headers = {"Authorization": f"Bearer {settings.openai_api_key.get_secret_value()}"}
    try:
        async with http.get(url, headers=headers) as resp:
            if resp.status != 200:
                return Check("LLM endpoint", False, f"GET {url}: HTTP {resp.status}", hint)
            body = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
        return Check("LLM endpoint", False, f"GET {url}: {exc!r}", hint)
    models = [m.get("id") for m in body.get("data", []) if isinstance(m, dict)]
    shown = ", ".join(str(m) for m in models[:4]) + (" ..." if len(models) > 4 else "")
    return Check("LLM endpoint", True, f"{url}: {len(models)} models ({shown})")


async def check_ready(http: aiohttp.ClientSession, name: str, base: str) -> Check:
    url = f"{base}/readyz"
    try:
        async with http.get(url) as resp:
            body = await resp.json(content_type=None)
            return readyz_check(name, url, resp.status, body)
    except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
        return readyz_check(name, url, None, None, repr(exc))


async def round_trip(
    settings: DoctorSettings,
    *,
    job_type: str,
    priority: str,
    prompt: str,
    max_tokens: int,
    timeout_s: float,
    monitor: bool,
    say: Say,
) -> Check:
    """Submit a job, follow it over the WebSocket, compare the stored result with the stream."""
    token = settings.streamjobs_token.get_secret_value()
    if not token:
        return Check(
            "job round trip",
            False,
            "STREAMJOBS_TOKEN is not set",
            "run make run (it writes .state/stack.env) or make token USER_ID=you",
        )
    base = settings.streamjobs_url.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"}
    body = {
        "prompt": prompt,
        "job_type": job_type,
        "priority": priority,
        "config": {"max_tokens": max_tokens},
        "metadata": {"source": "deploy.doctor"},
    }
    stream = LiveStream()
    job_id = "?"
    started = time.monotonic()
    try:
        async with (
            asyncio.timeout(timeout_s),
            aiohttp.ClientSession(headers=headers, timeout=HTTP_TIMEOUT) as http,
        ):
            async with http.post(f"{base}/api/v1/jobs", json=body) as resp:
                payload = await resp.json(content_type=None)
                if resp.status != 202:
                    return Check(
                        "job round trip",
                        False,
                        f"POST /api/v1/jobs: HTTP {resp.status} {payload}",
                        "a 401: STREAMJOBS_TOKEN has another secret, expired or was revoked",
                    )
            job_id = payload["job_id"]
            say(f"  submitted job {job_id} ({job_type}, priority {priority})")
            await _follow(settings.streamjobs_ws_url, token, job_id, stream, monitor, say, started)
            result = await _stored_result(http, base, job_id) if stream.final else None
    except TimeoutError:
        if stream.done:
            return Check(
                "job round trip",
                False,
                f"job {job_id}: finished live but no stored result within {timeout_s:g} s",
                "is the results service writing? see its /readyz and log",
            )
        return Check(
            "job round trip",
            False,
            f"job {job_id}: not finished within {timeout_s:g} s "
            f"({stream.tokens} tokens, {len(stream.texts)} chunks seen)",
            "raise --timeout for a slow LLM; otherwise see the streamer and notifier logs",
        )
    except (aiohttp.ClientError, WebSocketException, OSError, json.JSONDecodeError) as exc:
        return Check(
            "job round trip",
            False,
            f"job {job_id}: {exc!r}",
            "are the gateway and the notifier reachable? (see the checks above)",
        )
    verdict = round_trip_verdict(job_id, stream, result)
    elapsed = time.monotonic() - started
    if verdict.ok:
        return Check(verdict.name, True, f"{verdict.detail}, {elapsed:.2f} s")
    return verdict


async def _follow(
    ws_url: str,
    token: str,
    job_id: str,
    stream: LiveStream,
    monitor: bool,
    say: Say,
    started: float,
) -> None:
    last_print = 0.0
    async with connect(ws_url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        await ws.send(json.dumps({"type": "subscribe", "channel": f"job:{job_id}", "last_seq": -1}))
        async for raw in ws:
            msg = json.loads(raw)
            now = time.monotonic()
            if msg.get("type") == "error":
                raise WebSocketException(f"notifier refused: {msg}")
            stream.on_frame(msg, now)
            if monitor and (stream.done or now - last_print >= 0.5) and stream.texts:
                say(progress_line(stream, now - started, now))
                last_print = now
            if stream.done:
                return


async def _stored_result(
    http: aiohttp.ClientSession, base: str, job_id: str
) -> dict[str, object] | None:
    """The stored result; the results service may trail the live stream by a moment."""
    while True:
        async with http.get(f"{base}/api/v1/jobs/{job_id}/result") as resp:
            if resp.status == 200:
                result: dict[str, object] = await resp.json()
                return result
            if resp.status not in (404, 409, 425, 503):
                return None
        await asyncio.sleep(0.2)
