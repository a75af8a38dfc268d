"""`stream_tokens` over scripted HTTP answers of an LLM: the request, the tokens, every fault.

The upstream is a fake transport under the real openai SDK client, so the request is built,
sent and its status errors raised by the SDK exactly as against a real server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.streamer.upstream import (
    StreamEnd,
    UpstreamModel,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamServerError,
    UpstreamStreamCut,
    UpstreamTimeout,
    UpstreamUsage,
    stream_tokens,
)
from shared.contracts import ModelConfig, RunJobData, utcnow
from shared.jobtypes import load_job_types
from shared.topics import Priority
from tests.unit.test_streamer_upstream_sse import event, finish, stream_of, token, usage

Item = str | StreamEnd | UpstreamModel | UpstreamUsage
TYPES = load_job_types()


@dataclass
class Body(httpx2.AsyncByteStream):
    """A response body sent piece by piece; then it raises, hangs, or ends."""

    pieces: list[bytes]
    then: Exception | None = None
    hang: bool = False
    closed: bool = False
    sent: int = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            self.sent += 1
            yield piece
        if self.then is not None:
            raise self.then
        if self.hang:
            await asyncio.Event().wait()

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class FakeLLM:
    """Answers every request with `answer(request)`; remembers the requests."""

    answer: Callable[[httpx2.Request], httpx2.Response]
    requests: list[httpx2.Request] = field(default_factory=list)

    def client(self) -> openai.AsyncOpenAI:
        def handle(request: httpx2.Request) -> httpx2.Response:
            self.requests.append(request)
            return self.answer(request)

        http = httpx2.AsyncClient(transport=httpx2.MockTransport(handle))
        return openai.AsyncOpenAI(
            base_url="http://llm.test/v1", api_key="sk-test", max_retries=0, http_client=http
        )


def streaming(body: Body) -> Callable[[httpx2.Request], httpx2.Response]:
    return lambda request: httpx2.Response(
        200, headers={"content-type": "text/event-stream"}, stream=body, request=request
    )


def job(job_type: str = "analysis", **config: Any) -> RunJobData:
    return RunJobData(
        user_id="alice",
        prompt="Explain.",
        job_type=job_type,
        priority=Priority.NORMAL,
        config=ModelConfig(model="m", **config),
        submitted_at=utcnow(),
    )


async def collect(llm: FakeLLM, data: RunJobData | None = None) -> list[Item]:
    async with llm.client() as client:
        return [item async for item in stream_tokens(client, data or job(), TYPES)]


async def test_the_tokens_model_and_usage_come_in_order_then_the_end() -> None:
    def renamed(obj: dict[str, object]) -> bytes:
        return event({**obj, "model": "m-2024"})  # the upstream names its exact model

    body = Body(
        [
            event(token("a")) + renamed(token("b")),
            renamed(finish("length")) + renamed(usage(9, 2)),
            b"data: [DONE]\n\n",
        ]
    )
    items = await collect(FakeLLM(streaming(body)))
    assert items == [
        "a",
        UpstreamModel("m-2024"),
        "b",
        UpstreamUsage(9, 2, 11),
        StreamEnd("m-2024", "length", 9, 2, 11),
    ]
    assert body.closed


async def test_without_a_usage_chunk_the_end_counts_the_tokens_streamed() -> None:
    body = Body([event(token("a")) + event(token("b")) + event(finish()) + b"data: [DONE]\n\n"])
    items = await collect(FakeLLM(streaming(body)))
    assert items[-1] == StreamEnd("m", "stop", 0, 2, 2)


async def test_the_request_is_the_sdks_with_the_jobs_settings() -> None:
    llm = FakeLLM(streaming(Body([stream_of(["x"])])))
    data = job("security_analysis", max_tokens=77, temperature=0.3, top_p=0.9, seed=5)
    await collect(llm, data)
    (request,) = llm.requests
    assert request.url == "http://llm.test/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    sent = json.loads(request.content)
    assert sent["model"] == "m" and sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"], sent["seed"]) == (
        77,
        0.3,
        0.9,
        5,
    )
    assert sent["response_format"]["type"] == "json_schema"
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    texts=st.lists(st.text(min_size=1, max_size=5), max_size=20),
    size=st.integers(min_value=1, max_value=64),
)
async def test_the_tokens_are_those_the_sdk_reads_from_the_same_bytes(
    texts: list[str], size: int
) -> None:
    whole = stream_of(texts)
    pieces = [whole[i : i + size] for i in range(0, len(whole), size)]
    ours = await collect(FakeLLM(streaming(Body(pieces))))
    async with FakeLLM(streaming(Body(pieces))).client() as client:
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], stream=True
        )
        theirs = [
            c.choices[0].delta.content
            async for c in stream
            if c.choices and c.choices[0].delta.content
        ]
    assert [i for i in ours if isinstance(i, str)] == theirs == texts
    assert ours[-1] == StreamEnd("m", "stop", 7, len(texts), 7 + len(texts))


async def test_an_error_object_mid_stream_fails_the_attempt_as_a_server_error() -> None:
    error = {"error": {"message": "The server had an error", "type": "server_error"}}
    body = Body([event(token("a")), event(error), event(token("never"))])
    items: list[Item] = []
    async with FakeLLM(streaming(body)).client() as client:
        with pytest.raises(UpstreamServerError, match="The server had an error"):
            async for item in stream_tokens(client, job(), TYPES):
                items.append(item)
    assert items == ["a"]
    assert body.closed


async def test_a_malformed_event_fails_the_attempt_as_a_server_error() -> None:
    body = Body([event(token("a")), b"data: {oops\n\n"])
    with pytest.raises(UpstreamServerError, match="not a chat completion chunk"):
        await collect(FakeLLM(streaming(body)))


async def test_a_body_that_ends_without_a_finish_reason_is_a_cut_stream() -> None:
    with pytest.raises(UpstreamStreamCut):
        await collect(FakeLLM(streaming(Body([event(token("a"))]))))


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (httpx2.ReadError("connection reset"), UpstreamStreamCut),
        (httpx2.RemoteProtocolError("incomplete chunked read"), UpstreamStreamCut),
        (httpx2.ReadTimeout("timed out"), UpstreamTimeout),
    ],
    ids=["reset", "incomplete", "read-timeout"],
)
async def test_a_connection_that_breaks_mid_stream_maps_as_the_sdk_maps_it(
    failure: Exception, expected: type[Exception]
) -> None:
    body = Body([event(token("a"))], then=failure)
    with pytest.raises(expected):
        await collect(FakeLLM(streaming(body)))
    assert body.closed


async def test_status_errors_keep_their_mapping_and_retry_after() -> None:
    def limited(request: httpx2.Request) -> httpx2.Response:
        body = {"error": {"message": "slow down", "type": "requests"}}
        return httpx2.Response(429, headers={"retry-after": "3"}, json=body, request=request)

    with pytest.raises(UpstreamRateLimited) as caught:
        await collect(FakeLLM(limited))
    assert caught.value.retry_after == 3.0

    def refused(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(400, json={"error": {"message": "bad"}}, request=request)

    with pytest.raises(UpstreamRejected):
        await collect(FakeLLM(refused))


async def test_after_done_a_body_that_never_ends_is_not_waited_for() -> None:
    body = Body([stream_of(["a", "b"])], hang=True)
    async with asyncio.timeout(5):
        items = await collect(FakeLLM(streaming(body)))
    assert items[-1] == StreamEnd("m", "stop", 7, 2, 9)
    assert body.closed


async def test_closing_the_stream_early_closes_the_http_body() -> None:
    body = Body([event(token("a"))], hang=True)
    async with FakeLLM(streaming(body)).client() as client:
        tokens = stream_tokens(client, job(), TYPES)
        assert await anext(tokens) == "a"
        await tokens.aclose()
    assert body.closed
