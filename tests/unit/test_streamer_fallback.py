"""A job's attempts over its route: the next upstream on a retriable failure, then the
fallback model, past open breakers; deferred when none lets a call through.

Upstreams are fake transports under the real SDK; the producer records every record.
"""

from __future__ import annotations

import asyncio
import json
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx2
import openai
import pytest
from prometheus_client import CollectorRegistry

from services.streamer.breaker import CircuitBreaker
from services.streamer.job import Deps, Outcome, RetryPolicy, Running
from services.streamer.metrics import StreamerMetrics
from services.streamer.runner import run_job
from services.streamer.upstreams import Link, Upstreams
from shared.contracts import ModelConfig, RunJob, RunJobData, parse_record, utcnow
from shared.jobtypes import load_job_types
from shared.topics import Priority
from shared.upstreams import parse
from tests.unit.test_streamer_upstream_sse import stream_of

FILE = """
[models."m"]
fallback = "f"
[[models."m".upstreams]]
name = "a"
[[models."m".upstreams]]
name = "b"
weight = 0.000000001

[models."f"]
[[models."f".upstreams]]
name = "c"
"""


@dataclass
class Recorder:
    records: list[Any] = field(default_factory=list)

    async def send_and_wait(self, topic: str, value: bytes, **_: Any) -> None:
        self.records.append((topic, parse_record(value)))

    async def send(self, topic: str, value: bytes, **_: Any) -> asyncio.Future[None]:
        self.records.append((topic, parse_record(value)))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def of(self, kind: str) -> list[Any]:
        return [r for _, r in self.records if r.type == kind]


Answer = Callable[[httpx2.Request], httpx2.Response]


def ok(request: httpx2.Request) -> httpx2.Response:
    return httpx2.Response(
        200, headers={"content-type": "text/event-stream"}, content=stream_of(["Hi", " there"])
    )


def status(code: int) -> Answer:
    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(code, json={"error": {"message": "no"}}, request=request)

    return answer


@dataclass
class Rig:
    deps: Deps
    producer: Recorder
    asked: list[tuple[str, str]]  # (upstream, model) of every request

    def link(self, name: str) -> Link:
        return self.deps.upstreams.links[name]


def rig(answers: dict[str, Answer], *, max_attempts: int = 4) -> Rig:
    registry = parse(tomllib.loads(FILE)["models"])
    metrics = StreamerMetrics(CollectorRegistry())
    asked: list[tuple[str, str]] = []
    links = {}
    for name, answer in answers.items():

        def handler(request: httpx2.Request, name: str = name, answer: Answer = answer) -> Any:
            asked.append((name, json.loads(request.content)["model"]))
            return answer(request)

        http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
        client = openai.AsyncOpenAI(
            base_url=f"http://{name}.test/v1", api_key="k", max_retries=0, http_client=http
        )
        breaker = CircuitBreaker(failure_threshold=1, cooldown_s=60)
        links[name] = Link(registry.upstreams[name], client, breaker)
    producer = Recorder()
    deps = Deps(
        producer=producer,  # type: ignore[arg-type]
        upstreams=Upstreams(registry, links, metrics.breaker_state),
        metrics=metrics,
        retry=RetryPolicy(max_attempts=max_attempts, base_s=0, max_s=0),
        prefix="t",
        worker="w",
        window_ms=1,
        max_tokens=16,
        job_timeout_s=30,
        idle_timeout_s=30,
        job_types=load_job_types(),
    )
    return Rig(deps, producer, asked)


def running(model: str = "m") -> Running:
    return Running(
        job=RunJob(
            job_id="job-1",
            data=RunJobData(
                user_id="alice",
                prompt="Explain.",
                job_type="analysis",
                priority=Priority.NORMAL,
                config=ModelConfig(model=model),
                submitted_at=utcnow(),
            ),
        )
    )


async def test_a_failed_upstream_hands_the_next_attempt_to_the_next_at_once() -> None:
    r = rig({"a": status(503), "b": ok, "c": ok})
    assert await run_job(running(), r.deps) is Outcome.COMPLETED
    assert r.asked == [("a", "m"), ("b", "m")]
    started = [
        (e.data.attempt, e.data.upstream, e.data.model) for e in r.producer.of("job.started")
    ]
    assert started == [(1, "a", "m"), (2, "b", "m")]
    (retrying,) = r.producer.of("job.retrying")
    assert (retrying.data.attempt, retrying.data.next_attempt, retrying.data.upstream) == (
        1,
        2,
        "a",
    )
    assert retrying.data.usage is not None
    (done,) = r.producer.of("job.completed")
    assert (done.data.attempt, done.data.upstream, done.data.response) == (2, "b", "Hi there")
    assert [t for t, _ in r.producer.records if t == "t.jobs.retry"] == [], "no backoff trip"
    assert {c.data.attempt for c in r.producer.of("job.chunk")} == {2}


async def test_every_upstream_of_the_model_failing_falls_back_to_the_fallback_model() -> None:
    r = rig({"a": status(500), "b": status(429), "c": ok})
    assert await run_job(running(), r.deps) is Outcome.COMPLETED
    assert r.asked == [("a", "m"), ("b", "m"), ("c", "f")]
    (done,) = r.producer.of("job.completed")
    assert (done.data.attempt, done.data.upstream) == (3, "c")


async def test_an_open_breaker_is_skipped_without_an_attempt() -> None:
    r = rig({"a": ok, "b": ok, "c": ok})
    r.deps.upstreams.failure(r.link("a"), now=time.monotonic())  # threshold 1: open for 60 s
    assert await run_job(running(), r.deps) is Outcome.COMPLETED
    assert r.asked == [("b", "m")]
    assert [e.data.attempt for e in r.producer.of("job.started")] == [1]


async def test_every_breaker_open_defers_the_job_with_its_attempt_number() -> None:
    r = rig({"a": ok, "b": ok, "c": ok})
    for name in ("a", "b", "c"):
        r.deps.upstreams.failure(r.link(name), now=1e12)
    assert await run_job(running(), r.deps) is Outcome.DEFERRED
    assert r.asked == []
    ((topic, again),) = r.producer.records
    assert topic == "t.jobs.retry" and again.data.attempt == 1


async def test_a_refused_request_does_not_fall_back() -> None:
    r = rig({"a": status(400), "b": ok, "c": ok})
    assert await run_job(running(), r.deps) is Outcome.FAILED
    assert r.asked == [("a", "m")]


async def test_the_last_allowed_attempt_goes_to_the_retry_topic_not_the_next_upstream() -> None:
    r = rig({"a": status(503), "b": status(503), "c": ok}, max_attempts=2)
    assert await run_job(running(), r.deps) is Outcome.FAILED
    assert r.asked == [("a", "m"), ("b", "m")]
    (failed,) = r.producer.of("job.failed")
    assert (failed.data.attempt, failed.data.upstream) == (2, "b")


async def test_the_first_attempt_started_when_its_slot_was_given_a_fallback_when_it_began() -> None:
    """A busy loop may run an attempt's first step long after the dispatch loop chose the job:
    its JobStarted (and its queue wait) say when it was chosen, which is what priority means."""
    r = rig({"a": status(503), "b": ok, "c": ok})
    job = running()
    submitted = utcnow() - timedelta(seconds=5)
    job.job = RunJob(
        job_id=job.job.job_id, data=job.job.data.model_copy(update={"submitted_at": submitted})
    )
    job.slot_at = slot_at = submitted + timedelta(seconds=3)
    assert await run_job(job, r.deps) is Outcome.COMPLETED
    first, second = r.producer.of("job.started")
    assert first.occurred_at == slot_at
    assert first.data.queued_for_ms == pytest.approx(3000, abs=1)
    assert second.occurred_at > slot_at + timedelta(seconds=1), "the fallback began later"
    assert job.slot_at is None
