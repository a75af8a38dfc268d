"""The LLM simulator, served in-process, as the official openai SDK and a raw client see it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from deploy.localstack.procs import free_port
from deploy.simulator.server import Simulator
from deploy.simulator.settings import SimulatorSettings
from deploy.simulator.stats import Stats
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[2]
MODEL = "gpt-4o-mini"


def user(content: str) -> list[Any]:
    return [{"role": "system", "content": "You are terse."}, {"role": "user", "content": content}]


@pytest.fixture(scope="module")
async def sim() -> AsyncIterator[Simulator]:
    """One fast simulator for the module: no first-token delay, unlimited token rate."""
    async with Simulator(SimulatorSettings(port=0, ttft_ms=0, tokens_per_second=0)) as server:
        yield server


@pytest.fixture
async def fresh(sim: Simulator) -> Simulator:
    """The module's simulator with its counters and `fail_times` memory reset."""
    async with aiohttp.ClientSession() as http, http.post(f"{sim.url}/_sim/reset") as resp:
        assert resp.status == 200
    return sim


@pytest.fixture
async def client(fresh: Simulator) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=fresh.base_url, api_key="sim", max_retries=0) as c:
        yield c


async def stream_all(
    client: openai.AsyncOpenAI, messages: list[Any], **kwargs: Any
) -> tuple[list[Any], list[str]]:
    """Every chunk of a stream and the content deltas among them."""
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
        **kwargs,
    )
    chunks: list[Any] = []
    async with stream:
        async for chunk in stream:
            chunks.append(chunk)
    deltas = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    return chunks, deltas


async def stats_of(sim: Simulator) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{sim.url}/_sim/stats") as resp:
        payload: dict[str, Any] = await resp.json()
        return payload


async def test_sdk_stream_matches_the_whole_completion_and_reports_usage(
    client: openai.AsyncOpenAI, fresh: Simulator
) -> None:
    messages = user("Explain consumer groups. [[sim tokens=40]]")
    chunks, deltas = await stream_all(client, messages, max_tokens=25)
    whole = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=25)

    assert whole.object == "chat.completion"
    assert whole.choices[0].finish_reason == "length"
    assert "".join(deltas) == whole.choices[0].message.content
    assert len(deltas) == 25
    first, *_, finish, usage = chunks
    assert first.choices[0].delta.role == "assistant"
    assert first.id.startswith("chatcmpl-")
    assert {c.id for c in chunks} == {first.id}
    assert {(c.object, c.model) for c in chunks} == {("chat.completion.chunk", MODEL)}
    assert finish.choices[0].finish_reason == "length"
    assert usage.choices == []
    assert usage.usage is not None and whole.usage is not None
    assert usage.usage.completion_tokens == whole.usage.completion_tokens == 25
    assert usage.usage.prompt_tokens == whole.usage.prompt_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])

    stats = await stats_of(fresh)
    assert stats["streams_started"] == stats["streams_completed"] == 1
    assert stats["completions_total"] == 1
    assert stats["tokens_sent"] == 25


async def test_completion_stops_by_itself_at_the_configured_length(
    client: openai.AsyncOpenAI,
) -> None:
    chunks, deltas = await stream_all(client, user("Say something."))
    assert len(deltas) == 64
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert not deltas[0].startswith(" ")
    assert all(d.startswith(" ") or d == "." for d in deltas[1:])


async def test_same_request_streams_the_same_tokens_every_time(
    client: openai.AsyncOpenAI,
) -> None:
    _, once = await stream_all(client, user("Same question. [[sim tokens=30]]"))
    _, twice = await stream_all(client, user("Same question. [[sim tokens=30]]"))
    _, other = await stream_all(client, user("Other question. [[sim tokens=30]]"))
    assert once == twice
    assert once != other


async def test_fail_429_directive_raises_rate_limit_error_with_retry_after(
    client: openai.AsyncOpenAI, fresh: Simulator
) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(
            model=MODEL, messages=user("hi [[sim fail=429 retry_after=2]]"), stream=True
        )
    assert caught.value.response.headers["retry-after"] == "2"
    assert caught.value.response.headers["retry-after-ms"] == "2000"
    assert caught.value.code == "rate_limit_exceeded"
    assert (await stats_of(fresh))["errors_by_status"] == {"429": 1}


@pytest.mark.parametrize("status", [500, 503])
async def test_fail_5xx_directive_raises_internal_server_error(
    client: openai.AsyncOpenAI, status: int
) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(
            model=MODEL, messages=user(f"hi [[sim fail={status}]]"), stream=True
        )
    assert caught.value.status_code == status
    assert isinstance(caught.value.body, dict) and caught.value.body["type"] == "server_error"


async def test_cut_after_ends_the_stream_with_a_connection_error_after_n_tokens(
    client: openai.AsyncOpenAI, fresh: Simulator
) -> None:
    stream = await client.chat.completions.create(
        model=MODEL, messages=user("cut me [[sim cut_after=5]]"), stream=True
    )
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        async with stream:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)
    assert len(received) == 5
    _, whole = await stream_all(client, user("cut me"))
    assert received == whole[:5], "a cut stream sends the same tokens as a whole one"
    stats = await stats_of(fresh)
    assert (stats["streams_cut"], stats["streams_completed"]) == (1, 1)


async def test_fail_times_fails_once_then_answers_normally(
    client: openai.AsyncOpenAI, fresh: Simulator
) -> None:
    messages = user("flaky once [[sim fail=429 retry_after=0.05 fail_times=1]]")
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model=MODEL, messages=messages, stream=True)
    _, deltas = await stream_all(client, messages)
    assert len(deltas) == 64

    # the same with the SDK's own retry: 429, wait Retry-After, then the whole stream
    retried = user("flaky [[sim fail=429 retry_after=0.05 fail_times=1]] (SDK retries)")
    async with openai.AsyncOpenAI(base_url=fresh.base_url, api_key="sim", max_retries=2) as sdk:
        _, deltas = await stream_all(sdk, retried)
    assert len(deltas) == 64
    stats = await stats_of(fresh)
    assert stats["errors_by_status"] == {"429": 2}
    assert stats["streams_completed"] == 2


async def test_client_disconnect_mid_stream_is_counted(
    client: openai.AsyncOpenAI, fresh: Simulator
) -> None:
    stream = await client.chat.completions.create(
        model=MODEL, messages=user("long [[sim tokens=200 tps=50]]"), stream=True
    )
    seen = 0
    async for chunk in stream:
        seen += bool(chunk.choices and chunk.choices[0].delta.content)
        if seen == 3:
            break
    await stream.close()

    def cancelled() -> bool:
        return fresh.stats.streams_cancelled_by_client == 1

    await wait_for(cancelled, timeout=5, message="the simulator did not see the client leave")
    stats = await stats_of(fresh)
    assert stats["streams_active"] == 0
    assert stats["streams_completed"] == 0
    assert stats["tokens_sent"] < 200


async def test_hang_after_stalls_until_the_client_gives_up(fresh: Simulator) -> None:
    body = {"model": MODEL, "stream": True, "messages": user("stall [[sim hang_after=3]]")}
    lines: list[bytes] = []
    timeout = aiohttp.ClientTimeout(sock_read=0.3)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        with pytest.raises(asyncio.TimeoutError):
            async with http.post(f"{fresh.url}/v1/chat/completions", json=body) as resp:
                assert resp.status == 200
                async for line in resp.content:
                    if line.startswith(b"data: "):
                        lines.append(line)
    assert len(lines) == 4  # the role chunk and three tokens, then nothing
    assert fresh.stats.streams_hung == 1

    def cancelled() -> bool:
        return fresh.stats.streams_cancelled_by_client == 1

    await wait_for(cancelled, timeout=5, message="a hung stream did not notice its client left")


async def test_stop_releases_hung_streams_promptly() -> None:
    sim = Simulator(SimulatorSettings(port=0, ttft_ms=0, tokens_per_second=0))
    await sim.start()
    try:
        body = {"model": MODEL, "stream": True, "messages": user("[[sim hang_after=2]]")}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{sim.url}/v1/chat/completions", json=body) as resp,
        ):
            await wait_for(lambda: sim.stats.streams_hung == 1, timeout=5, message="no hang")
            started = time.monotonic()
            await sim.stop()
            assert time.monotonic() - started < 2
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
    finally:
        await sim.stop()


async def test_first_token_delay_and_token_rate_are_roughly_honoured() -> None:
    settings = SimulatorSettings(port=0, ttft_ms=250, tokens_per_second=40)
    async with (
        Simulator(settings) as sim,
        openai.AsyncOpenAI(base_url=sim.base_url, api_key="sim", max_retries=0) as client,
    ):

        async def timed(content: str) -> tuple[float, float]:
            started = time.perf_counter()
            stream = await client.chat.completions.create(
                model=MODEL, messages=user(content), stream=True
            )
            first = 0.0
            async with stream:
                async for chunk in stream:
                    if not first and chunk.choices and chunk.choices[0].delta.content:
                        first = time.perf_counter() - started
            return first, time.perf_counter() - started

        first, total = await timed("slow [[sim tokens=11]]")
        assert first >= 0.2, f"first token after {first:.3f}s, configured 0.25s"
        assert total - first >= 0.2, f"10 tokens at 40/s took {total - first:.3f}s"
        fast_first, fast_total = await timed("fast [[sim tokens=11 ttft_ms=0 tps=0]]")
        assert fast_first < first and fast_total < total


async def test_configured_fault_rates_apply_without_directives() -> None:
    settings = SimulatorSettings(port=0, ttft_ms=0, tokens_per_second=0, rate_limit_rate=1.0)
    async with (
        Simulator(settings) as sim,
        openai.AsyncOpenAI(base_url=sim.base_url, api_key="sim", max_retries=0) as client,
    ):
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model=MODEL, messages=user("x"))
        assert caught.value.response.headers["retry-after"] == "1"
    dropping = SimulatorSettings(port=0, ttft_ms=0, tokens_per_second=0, drop_rate=1.0)
    async with (
        Simulator(dropping) as sim,
        openai.AsyncOpenAI(base_url=sim.base_url, api_key="sim", max_retries=0) as client,
    ):
        with pytest.raises(openai.APIConnectionError):
            await stream_all(client, user("x"))
        assert sim.stats.streams_cut == 1


async def test_bad_requests_get_400_in_openai_error_shape(
    client: openai.AsyncOpenAI, fresh: Simulator
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{fresh.url}/v1/chat/completions", data=b"not json") as resp,
    ):
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model=MODEL, messages=[])
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=MODEL, messages=user("[[sim tokns=3]]"))
    assert "tokns" in str(caught.value)
    assert (await stats_of(fresh))["errors_by_status"] == {"400": 3}


async def test_models_health_and_reset(client: openai.AsyncOpenAI, fresh: Simulator) -> None:
    models = [m.id async for m in client.models.list()]
    assert MODEL in models
    await stream_all(client, user("count me"))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{fresh.url}/healthz") as resp:
            assert resp.status == 200
            assert await resp.json() == {"status": "ok"}
        assert (await stats_of(fresh))["requests_total"] == 1
        async with http.post(f"{fresh.url}/_sim/reset") as resp:
            assert (await resp.json())["requests_total"] == 0
    assert fresh.stats == Stats()


async def wait_until_healthy(url: str, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"{url} did not answer 200 within {timeout}s")


async def test_process_serves_on_the_given_port_and_stops_on_sigterm() -> None:
    port = free_port()
    env = {**os.environ, "SIM_TTFT_MS": "0", "SIM_LOG_JSON": "false"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "deploy.simulator",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_until_healthy(f"http://127.0.0.1:{port}/healthz", timeout=15)
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            _, stderr = await proc.communicate()
        assert proc.returncode == 0, stderr.decode()
        assert b"simulator stopped" in stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
