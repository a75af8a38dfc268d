"""The official `openai` package against the gateway's /v1: only the base URL changes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI, AsyncStream, OpenAI
from openai.types.chat import ChatCompletionChunk

from deploy.localstack.stack import Stack
from shared.auth import SCOPE_READ, issue_token
from tests.e2e.conftest import running_system
from tests.e2e.test_pipeline import stored_result
from tests.e2e.test_tool_calls import WEATHER

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]

MODEL = "gpt-4o-mini"
# No catch-all "*": a model the file does not name is unknown.
NAMED_MODELS = """
[models."gpt-4o-mini"]
[[models."gpt-4o-mini".upstreams]]
name = "simulator"
"""


@pytest.fixture
def named_system(
    kafka_bootstrap: str, database_url: str, topic_prefix: str, test_state_dir: Path
) -> Iterator[Stack]:
    path = test_state_dir / f"workloads-{topic_prefix}.toml"
    path.write_text(NAMED_MODELS)
    with running_system(
        test_state_dir,
        kafka_bootstrap,
        database_url,
        topic_prefix=topic_prefix,
        env={"STREAMJOBS_WORKLOADS_FILE": str(path)},
    ) as stack:
        yield stack


def ask(text: str) -> list[Any]:
    return [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": text},
    ]


@pytest.fixture
async def closing() -> AsyncIterator[list[AsyncOpenAI | OpenAI]]:
    """The SDK clients a test makes, closed after it (their pools hold sockets)."""
    clients: list[AsyncOpenAI | OpenAI] = []
    yield clients
    for client in clients:
        if isinstance(client, AsyncOpenAI):
            await client.close()
        else:
            client.close()


def event_id(chunk: ChatCompletionChunk) -> str:
    extra = chunk.model_extra or {}
    value = extra.get("event_id")
    assert isinstance(value, str), chunk
    return value


async def job_view(base: str, token: str, job_id: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{base}/api/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


def usage_of(stored: dict[str, Any]) -> tuple[int, int, int]:
    u = stored["usage"]
    return u["prompt_tokens"], u["completion_tokens"], u["total_tokens"]


async def test_streamed_and_plain_completions_equal_the_stored_result_of_their_job(
    system: Stack, user_token: str, closing: list[AsyncOpenAI | OpenAI]
) -> None:
    base = system.urls()["gateway"]
    client = AsyncOpenAI(base_url=f"{base}/v1", api_key=user_token, max_retries=0)
    closing.append(client)

    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=ask("Explain Kafka partitions. [[sim tokens=80]]"),
        max_tokens=200,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"X-Streamjobs-Priority": "urgent", "Idempotency-Key": "oai-stream-1"},
    )
    job_id = raw.headers["X-Streamjobs-Job-Id"]
    chunks = [chunk async for chunk in raw.parse()]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    usage = chunks[-1].usage

    stored = await stored_result(base, user_token, job_id)
    assert {c.id for c in chunks} == {job_id}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert text == stored["response"] and text
    assert finishes[-1] == stored["finish_reason"] == "stop"
    assert finishes[:-1] == [None] * (len(finishes) - 1)
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == usage_of(stored)
    assert all(c.usage is None for c in chunks[:-1])
    view = await job_view(base, user_token, job_id)
    assert view["priority"] == "urgent", "the header's priority reaches the job"

    # Not streamed, with the blocking client; the band from metadata this time.
    sync = OpenAI(base_url=f"{base}/v1", api_key=user_token, max_retries=0)
    closing.append(sync)
    plain = sync.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=ask("Explain consumer groups. [[sim tokens=40]]"),
        metadata={"streamjobs_priority": "low", "ticket": "T-7"},
    )
    answer = plain.parse()
    plain_id = plain.headers["X-Streamjobs-Job-Id"]
    stored = await stored_result(base, user_token, plain_id)
    assert answer.id == plain_id and answer.object == "chat.completion"
    assert answer.choices[0].message.content == stored["response"]
    assert answer.choices[0].finish_reason == stored["finish_reason"]
    assert answer.usage is not None
    assert (
        answer.usage.prompt_tokens,
        answer.usage.completion_tokens,
        answer.usage.total_tokens,
    ) == usage_of(stored)
    view = await job_view(base, user_token, plain_id)
    assert view["priority"] == "low"

    # The same Idempotency-Key and body: the same job, not a second one.
    again = await client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=ask("Explain Kafka partitions. [[sim tokens=80]]"),
        max_tokens=200,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"X-Streamjobs-Priority": "urgent", "Idempotency-Key": "oai-stream-1"},
    )
    assert again.headers["X-Streamjobs-Job-Id"] == job_id
    replayed = [chunk async for chunk in again.parse()]
    assert "".join(c.choices[0].delta.content or "" for c in replayed if c.choices) == text

    # The answer of a job already done, by its id (the SDK's retrieve).
    fetched = await client.chat.completions.retrieve(job_id)
    assert fetched.choices[0].message.content == text


async def test_a_dropped_stream_resumes_after_its_last_chunk_without_gap_or_duplicate(
    system: Stack, user_token: str, closing: list[AsyncOpenAI | OpenAI]
) -> None:
    base = system.urls()["gateway"]
    client = AsyncOpenAI(base_url=f"{base}/v1", api_key=user_token, max_retries=0)
    closing.append(client)
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=ask("Tell a long story. [[sim tokens=400]]"),
        max_tokens=600,
        stream=True,
    )
    seen: list[ChatCompletionChunk] = []
    async for chunk in stream:
        seen.append(chunk)
        if len(seen) == 3:
            break
    await stream.close()  # the client drops
    job_id, last = seen[-1].id, event_id(seen[-1])

    resumed = await client.get(
        f"/chat/completions/{job_id}",
        cast_to=ChatCompletionChunk,
        options={"params": {"stream": "true", "starting_after": last, "include_usage": "true"}},
        stream=True,
        stream_cls=AsyncStream[ChatCompletionChunk],
    )
    rest = [chunk async for chunk in resumed]

    ids = [event_id(c) for c in seen + rest if c.choices and c.choices[0].finish_reason is None]
    seqs = [int(i.split(":")[1]) for i in ids]
    assert seqs == list(range(len(seqs))), "a gap or a duplicate"
    text = "".join(c.choices[0].delta.content or "" for c in seen + rest if c.choices)
    stored = await stored_result(base, user_token, job_id)
    assert text == stored["response"]
    assert rest[-1].usage is not None
    assert rest[-1].usage.completion_tokens == stored["usage"]["completion_tokens"]

    # Last-Event-ID says the same as starting_after; after the closing chunk, nothing more.
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{base}/v1/chat/completions/{job_id}?stream=true",
            headers={
                "Authorization": f"Bearer {user_token}",
                "Last-Event-ID": event_id(rest[-1]).replace(":usage", ":finish"),
            },
        ) as resp,
    ):
        assert resp.status == 200
        assert (await resp.text()).strip() == "data: [DONE]"


async def test_one_sdk_stream_outlives_a_notifier_kill_9_without_gap_or_duplicate(
    system: Stack, user_token: str, closing: list[AsyncOpenAI | OpenAI]
) -> None:
    """The gateway reads the job's chunks from the durable pipeline: when the notifier dies,
    it resumes from the restarted one after the last chunk it sent, in the same response."""
    base = system.urls()["gateway"]
    client = AsyncOpenAI(base_url=f"{base}/v1", api_key=user_token, max_retries=0)
    closing.append(client)
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=ask("Stream for a while. [[sim tokens=240 tps=40]]"),
        max_tokens=400,
        stream=True,
    )
    chunks: list[ChatCompletionChunk] = []
    async for chunk in stream:
        chunks.append(chunk)
        if len(chunks) == 3:
            system.processes["notifier"].kill()  # SIGKILL: no goodbye, no state saved
            await asyncio.to_thread(system.start_service, "notifier")
    texts = [c for c in chunks if c.choices and c.choices[0].finish_reason is None]
    seqs = [int(event_id(c).split(":")[1]) for c in texts]
    assert seqs == list(range(len(seqs))), "a gap or a duplicate"
    assert chunks[-1].choices[0].finish_reason == "stop"
    stored = await stored_result(base, user_token, chunks[0].id)
    assert "".join(c.choices[0].delta.content or "" for c in texts) == stored["response"]


async def test_tool_calls_arrive_as_openai_tool_calls_streamed_and_not(
    system: Stack, user_token: str, closing: list[AsyncOpenAI | OpenAI]
) -> None:
    base = system.urls()["gateway"]
    client = AsyncOpenAI(base_url=f"{base}/v1", api_key=user_token, max_retries=0)
    closing.append(client)
    prompt = ask("What is the weather in both cities? [[sim tool_calls=2 tokens=4]]")
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=prompt,
        tools=[WEATHER],
        max_tokens=200,
        stream=True,  # type: ignore[list-item]
    )
    chunks = [chunk async for chunk in stream]
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or () if chunk.choices else ():
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] = call["id"] or (delta.id or "")
            if delta.function is not None:
                call["name"] = call["name"] or (delta.function.name or "")
                call["arguments"] += delta.function.arguments or ""
    stored = await stored_result(base, user_token, chunks[0].id)
    assert chunks[-1].choices[0].finish_reason == "tool_calls" == stored["finish_reason"]
    assert [
        {"id": c["id"], "name": c["name"], "arguments": c["arguments"]}
        for _, c in sorted(calls.items())
    ] == [
        {"id": t["id"], "name": t["function"]["name"], "arguments": t["function"]["arguments"]}
        for t in stored["tool_calls"]
    ]
    assert len(calls) == 2 and all(json.loads(c["arguments"])["city"] for c in calls.values())

    answer = await client.chat.completions.create(
        model=MODEL,
        messages=prompt,
        tools=[WEATHER],
        max_tokens=200,  # type: ignore[list-item]
    )
    message = answer.choices[0].message
    stored = await stored_result(base, user_token, answer.id)
    assert answer.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls is not None
    assert [
        (t.id, t.function.name, t.function.arguments)  # type: ignore[union-attr]
        for t in message.tool_calls
    ] == [
        (t["id"], t["function"]["name"], t["function"]["arguments"]) for t in stored["tool_calls"]
    ]


async def test_refusals_and_failed_jobs_are_openai_errors_the_sdk_raises(
    named_system: Stack, closing: list[AsyncOpenAI | OpenAI]
) -> None:
    user_token = issue_token(named_system.auth_secret(), "alice")
    base = f"{named_system.urls()['gateway']}/v1"
    client = AsyncOpenAI(base_url=base, api_key=user_token, max_retries=0)
    stranger = AsyncOpenAI(base_url=base, api_key="not-a-token", max_retries=0)
    closing.extend((client, stranger))

    with pytest.raises(openai.AuthenticationError) as bad_key:
        await stranger.chat.completions.create(model=MODEL, messages=ask("hi"))
    assert bad_key.value.code == "invalid_api_key"

    reader = AsyncOpenAI(
        base_url=base,
        api_key=issue_token(named_system.auth_secret(), "alice", (SCOPE_READ,)),
        max_retries=0,
    )
    closing.append(reader)
    with pytest.raises(openai.PermissionDeniedError):
        await reader.chat.completions.create(model=MODEL, messages=ask("hi"))

    with pytest.raises(openai.NotFoundError) as unknown:
        await client.chat.completions.create(model="no-such-model", messages=ask("hi"))
    assert unknown.value.code == "model_not_found" and "no-such-model" in unknown.value.message

    with pytest.raises(openai.BadRequestError) as invalid:
        await client.chat.completions.create(model=MODEL, messages=ask("hi"), temperature=7)
    assert invalid.value.param == "temperature"

    with pytest.raises(openai.BadRequestError) as unsupported:
        await client.chat.completions.create(
            model=MODEL, messages=ask("hi"), extra_body={"no_such_field": 1}
        )
    assert unsupported.value.param == "no_such_field"

    with pytest.raises(openai.BadRequestError) as bad_band:
        await client.chat.completions.create(
            model=MODEL, messages=ask("hi"), extra_headers={"X-Streamjobs-Priority": "asap"}
        )
    assert bad_band.value.param == "priority"

    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.retrieve("0b6e-not-a-job")

    # A job the upstream refuses (400): the same error both ways, naming the job.
    failing = ask("Refuse this. [[sim fail=400]]")
    with pytest.raises(openai.BadRequestError) as failed:
        await client.chat.completions.create(model=MODEL, messages=failing)
    assert failed.value.code == "job_failed" and "job " in failed.value.message
    stream = await client.chat.completions.create(model=MODEL, messages=failing, stream=True)
    with pytest.raises(openai.APIError) as streamed:
        async for _ in stream:
            pass
    assert streamed.value.code == "job_failed"

    models = await client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert (await client.models.retrieve(MODEL)).id == MODEL
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("no-such-model")


async def test_a_restarted_attempt_ends_the_stream_with_an_error_naming_the_job(
    system: Stack, user_token: str, closing: list[AsyncOpenAI | OpenAI]
) -> None:
    """A stream cannot take text back: a retry that restarts ends it with an error, and the
    job's answer is still there to read."""
    base = system.urls()["gateway"]
    client = AsyncOpenAI(base_url=f"{base}/v1", api_key=user_token, max_retries=0)
    closing.append(client)
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=ask("Cut me once. [[sim tokens=60 cut_after=10 fail_times=1]]"),
        stream=True,
    )
    job_id = raw.headers["X-Streamjobs-Job-Id"]
    text = ""
    with pytest.raises(openai.APIError) as restarted:
        async for chunk in raw.parse():
            text += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert restarted.value.code == "attempt_restarted" and job_id in restarted.value.message
    assert text, "the first attempt's text came before the error"

    answer = await client.chat.completions.retrieve(job_id)
    stored = await stored_result(base, user_token, job_id)
    assert answer.choices[0].message.content == stored["response"]
    assert stored["attempt"] == 2

    # From the start again: the current attempt whole, then its end.
    again = await client.get(
        f"/chat/completions/{job_id}",
        cast_to=ChatCompletionChunk,
        options={"params": {"stream": "true"}},
        stream=True,
        stream_cls=AsyncStream[ChatCompletionChunk],
    )
    chunks = [c async for c in again]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == stored["response"]
