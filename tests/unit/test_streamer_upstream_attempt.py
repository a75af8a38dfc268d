"""One attempt's stream: read and chunked in one task, published in order, cancels, timers.

The LLM is a fake transport under the real SDK whose body the test feeds piece by piece;
the producer is a fake that records what would go to Kafka.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
import pytest
from aiokafka.errors import KafkaTimeoutError
from prometheus_client import CollectorRegistry

from services.streamer.job import Deps, RetryPolicy, Running
from services.streamer.metrics import StreamerMetrics
from services.streamer.stream import AttemptStream
from services.streamer.toolcalls import assemble
from services.streamer.upstream import StreamEnd, UpstreamTimeout
from services.streamer.upstreams import Upstreams
from shared.contracts import CancelJobData, ModelConfig, RunJob, RunJobData, TokenChunk, utcnow
from shared.contracts import parse_record as parse
from shared.jobtypes import load_job_types
from shared.routing import chunk_partition
from shared.topics import Priority
from shared.upstreams import Registry
from tests.support import wait_for
from tests.unit.test_streamer_upstream_sse import event, finish, token

END = b""  # fed to a body: the body ends here


@dataclass
class FedBody(httpx2.AsyncByteStream):
    """A response body that sends what the test feeds it, when it feeds it."""

    pieces: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    closed: bool = False

    def feed(self, *pieces: bytes) -> None:
        for piece in pieces:
            self.pieces.put_nowait(piece)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (piece := await self.pieces.get()) != END:
            yield piece

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class FakeProducer:
    """Records every chunk sent; `pause` makes each send give way to the loop first."""

    records: list[TokenChunk] = field(default_factory=list)
    partitions: set[int] = field(default_factory=lambda: {0, 1, 2, 3})
    pause: int = 0

    async def partitions_for(self, topic: str) -> set[int]:
        return self.partitions

    async def send(
        self, topic: str, value: bytes, *, partition: int, **_: Any
    ) -> asyncio.Future[None]:
        for _ in range(self.pause):
            await asyncio.sleep(0)
        record = parse(value)
        assert isinstance(record, TokenChunk)
        assert partition == chunk_partition(record.job_id, len(self.partitions))
        self.records.append(record)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def texts(self) -> list[str]:
        return [r.data.text for r in self.records]


@dataclass
class Attempt:
    body: FedBody
    producer: FakeProducer
    running: Running
    stream: AttemptStream
    task: asyncio.Task[StreamEnd | None]


@pytest.fixture
async def attempt() -> AsyncIterator[Any]:
    started: list[Attempt] = []

    async def start(
        *,
        window_ms: float = 30.0,
        max_tokens: int = 16,
        idle_timeout_s: float = 30.0,
        job_timeout_s: float = 600.0,
        pause: int = 0,
        after: asyncio.Future[Any] | None = None,
        asked: list[httpx2.Request] | None = None,
    ) -> Attempt:
        body = FedBody()

        def answer(request: httpx2.Request) -> httpx2.Response:
            if asked is not None:
                asked.append(request)
            headers = {"content-type": "text/event-stream"}
            return httpx2.Response(200, headers=headers, stream=body, request=request)

        http = httpx2.AsyncClient(transport=httpx2.MockTransport(answer))
        client = openai.AsyncOpenAI(
            base_url="http://llm.test/v1", api_key="k", max_retries=0, http_client=http
        )
        producer = FakeProducer(pause=pause)
        metrics = StreamerMetrics(CollectorRegistry())
        deps = Deps(
            producer=producer,  # type: ignore[arg-type]
            # The attempt is handed its upstream's client: no route is consulted here.
            upstreams=Upstreams(Registry({}), {}, metrics.breaker_state),
            metrics=metrics,
            retry=RetryPolicy(),
            prefix="t",
            worker="w",
            window_ms=window_ms,
            max_tokens=max_tokens,
            job_timeout_s=job_timeout_s,
            idle_timeout_s=idle_timeout_s,
            job_types=load_job_types(),
        )
        job = RunJob(
            job_id="job-1",
            data=RunJobData(
                user_id="alice",
                prompt="Explain.",
                job_type="analysis",
                priority=Priority.NORMAL,
                config=ModelConfig(model="m"),
                submitted_at=utcnow(),
            ),
        )
        running = Running(job=job)
        stream = AttemptStream(running, deps, time.time(), client, after=after)
        task = asyncio.create_task(stream.run())
        one = Attempt(body, producer, running, stream, task)
        started.append(one)
        return one

    yield start
    for one in started:
        one.task.cancel()
        await asyncio.gather(one.task, return_exceptions=True)
        await one.stream.close()


async def test_the_first_token_is_published_at_once_whatever_the_window(attempt: Any) -> None:
    a = await attempt(window_ms=60_000, max_tokens=1000)
    a.body.feed(event(token("Hello")))
    await wait_for(lambda: a.producer.records, timeout=5, message="the first chunk was sent")
    assert [(r.data.seq, r.data.text, r.data.tokens) for r in a.producer.records] == [
        (0, "Hello", 1)
    ]
    a.body.feed(event(token(" world")))
    a.body.feed(event(finish()), b"data: [DONE]\n\n", END)
    end = await asyncio.wait_for(a.task, 5)
    assert end is not None and end.finish_reason == "stop"
    assert a.producer.texts() == ["Hello", " world"]


async def test_the_upstream_is_asked_before_the_started_fact_is_in_but_no_chunk_leaves_before(
    attempt: Any,
) -> None:
    # The JobStarted send: the broker has not answered yet.
    started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    asked: list[httpx2.Request] = []
    a = await attempt(window_ms=60_000, max_tokens=1000, after=started, asked=asked)
    a.body.feed(event(token("Hello")))
    await wait_for(lambda: asked, timeout=5, message="the upstream was asked")
    await wait_for(lambda: a.stream.first_token_at, timeout=5, message="the first token read")
    for _ in range(20):
        await asyncio.sleep(0)
    assert a.producer.records == [], "a chunk left before its attempt's JobStarted was in"
    started.set_result(None)
    await wait_for(lambda: a.producer.records, timeout=5, message="the first chunk was sent")
    assert a.producer.texts() == ["Hello"]
    a.body.feed(event(finish()), b"data: [DONE]\n\n", END)
    assert await asyncio.wait_for(a.task, 5) is not None


async def test_a_started_fact_the_broker_refused_fails_the_attempt_with_no_chunk_sent(
    attempt: Any,
) -> None:
    started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    a = await attempt(window_ms=60_000, max_tokens=1000, after=started)
    a.body.feed(event(token("Hello")))
    await wait_for(lambda: a.stream.first_token_at, timeout=5, message="the first token read")
    started.set_exception(KafkaTimeoutError("the broker did not answer"))
    with pytest.raises(KafkaTimeoutError):
        await asyncio.wait_for(a.task, 5)
    assert a.producer.records == []
    with pytest.raises(KafkaTimeoutError):
        await a.stream.drain()  # what the runner awaits before any final event


async def test_tokens_that_stop_coming_leave_when_their_window_passes(attempt: Any) -> None:
    a = await attempt(window_ms=50, max_tokens=1000)
    a.body.feed(event(token("a")))
    await wait_for(lambda: a.producer.records, timeout=5, message="the first chunk was sent")
    # The attempt's clock sleeps now (nothing pends): the next token must wake it in time.
    a.body.feed(event(token("b")) + event(token("c")))
    # The upstream says nothing more: only the attempt's clock can send "bc".
    await wait_for(lambda: len(a.producer.records) == 2, timeout=5, message="the window flush")
    assert a.producer.texts() == ["a", "bc"]
    assert not a.task.done()
    a.body.feed(event(finish()), b"data: [DONE]\n\n", END)
    assert await asyncio.wait_for(a.task, 5) is not None


async def test_a_cancel_closes_the_upstream_at_once_and_publishes_what_was_read(
    attempt: Any,
) -> None:
    a = await attempt(window_ms=60_000, max_tokens=1000)
    a.body.feed(event(token("a")) + event(token("b")) + event(token("c")))
    await wait_for(lambda: a.stream.chunker.pending == 2, timeout=5, message="b and c read")
    a.running.request_cancel(CancelJobData(user_id="alice"))
    assert await asyncio.wait_for(a.task, 5) is None
    assert a.body.closed, "the HTTP stream is closed"
    assert a.producer.texts() == ["a", "bc"]
    assert a.stream.streamed().last_seq == 1
    assert a.stream.streamed().usage.completion_tokens == 3


async def test_an_upstream_that_goes_quiet_times_out_with_its_tokens_published(
    attempt: Any,
) -> None:
    a = await attempt(window_ms=60_000, max_tokens=1000, idle_timeout_s=0.2)
    a.body.feed(event(token("a")) + event(token("b")))
    with pytest.raises(UpstreamTimeout, match=r"no token for 0\.2 s"):
        await asyncio.wait_for(a.task, 5)
    assert a.body.closed
    assert a.producer.texts() == ["a", "b"]


async def test_an_attempt_past_the_job_timeout_ends_even_while_tokens_come(attempt: Any) -> None:
    a = await attempt(job_timeout_s=0.3, idle_timeout_s=10)

    async def trickle() -> None:
        while not a.task.done():
            a.body.feed(event(token("t")))
            await asyncio.sleep(0.02)  # the upstream's pace, not a wait for the test

    feeder = asyncio.create_task(trickle())
    try:
        with pytest.raises(UpstreamTimeout, match="job timeout"):
            await asyncio.wait_for(a.task, 5)
    finally:
        await feeder
    assert a.body.closed
    published = sum(r.data.tokens for r in a.producer.records)
    assert published == a.stream.chunker.tokens > 0


async def test_chunks_cut_while_a_send_waits_still_go_out_in_seq_order(attempt: Any) -> None:
    a = await attempt(window_ms=0, max_tokens=1, pause=3)
    words = [f"w{i} " for i in range(40)]
    for i in range(0, 40, 8):
        a.body.feed(b"".join(event(token(w)) for w in words[i : i + 8]))
    a.body.feed(event(finish()), b"data: [DONE]\n\n", END)
    assert await asyncio.wait_for(a.task, 5) is not None
    assert [r.data.seq for r in a.producer.records] == list(range(40))
    assert a.producer.texts() == words
    assert a.stream.chunker.response() == "".join(words)


def tool_delta(index: int, arguments: str, **first: str) -> dict[str, object]:
    delta: dict[str, object] = {"index": index, "function": {"arguments": arguments}}
    if first:
        delta.update(id=first["id"], type="function")
        delta["function"] = {"name": first["name"], "arguments": arguments}
    choice = {"index": 0, "delta": {"tool_calls": [delta]}, "finish_reason": None}
    return {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}


async def test_tool_call_deltas_leave_in_gap_free_chunks_that_assemble_to_the_calls(
    attempt: Any,
) -> None:
    a = await attempt(window_ms=50, max_tokens=3)
    a.body.feed(event(token("Let me check.")))
    a.body.feed(event(tool_delta(0, "", id="call_a", name="get_weather")))
    for piece in ('{"city"', ': "Paris"', "}"):
        a.body.feed(event(tool_delta(0, piece)))
    a.body.feed(event(tool_delta(1, "", id="call_b", name="get_time")))
    # The upstream stalls with two deltas pending (under the count): the window sends them.
    await wait_for(
        lambda: any(d.id == "call_b" for r in a.producer.records for d in r.data.tool_calls or ()),
        timeout=5,
        message="the pending deltas left with their window",
    )
    assert len(a.producer.records) == 3 and a.producer.records[2].data.tokens == 2
    a.body.feed(event(tool_delta(1, "{")), event(tool_delta(1, "}")))
    a.body.feed(event(finish("tool_calls")), b"data: [DONE]\n\n", END)
    end = await asyncio.wait_for(a.task, 5)
    assert end is not None and end.finish_reason == "tool_calls"
    records = a.producer.records
    assert [r.data.seq for r in records] == list(range(len(records)))
    assert records[0].data.text == "Let me check." and records[0].data.tool_calls is None
    assert sum(r.data.tokens for r in records) == 8 == end.completion_tokens
    deltas = [d.model_dump() for r in records for d in r.data.tool_calls or ()]
    calls = assemble(deltas)
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("call_a", "get_weather", '{"city": "Paris"}'),
        ("call_b", "get_time", "{}"),
    ]
    assert assemble(a.stream.chunker.calls) == calls
    # No usage came: completion tokens counted, prompt tokens estimated from the request.
    assert a.stream.usage_estimated and end.prompt_tokens > 0
