"""Submitting through the gateway over the real Kafka broker: records, validation, problems."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from shared.contracts import JobAccepted, RunJob
from shared.topics import Priority, control_topic, events_topic, job_topic
from tests.integration.gateway_harness import (
    GatewayKit,
    StartGateway,
    bearer,
    http,
    kit,
    start_gateway,
    topic_records,
)

pytestmark = pytest.mark.kafka
__all__ = ["http", "kit", "start_gateway"]  # fixtures

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


async def test_submission_publishes_run_job_on_its_band_and_accepted_on_events(
    kit: GatewayKit,
) -> None:
    start_gateway, tokens, http, kafka_bootstrap, topic_prefix = kit
    gw = await start_gateway()
    body = {
        "prompt": "Audit this contract",
        "job_type": "security_analysis",
        "priority": "high",
        "config": {"model": "gpt-4o-mini", "max_tokens": 64, "temperature": 0.2},
        "metadata": {"ticket": 7},
    }
    headers = bearer(tokens("alice"), traceparent=f"00-{TRACE}-00f067aa0ba902b7-01")
    async with http.post(f"{gw.url}/api/v1/jobs", json=body, headers=headers) as resp:
        assert resp.status == 202, await resp.text()
        accepted = await resp.json()
        assert TRACE in resp.headers["traceparent"]
    job_id = accepted["job_id"]
    assert accepted["status"] == "queued"
    assert accepted["priority"] == "high"
    assert accepted["job_type"] == "security_analysis"
    links = accepted["links"]
    assert links["self"] == f"/api/v1/jobs/{job_id}"
    assert links["cancel"] == f"/api/v1/jobs/{job_id}/cancel"
    assert links["websocket"] == "ws://127.0.0.1:1/ws"

    records = await topic_records(kafka_bootstrap, topic_prefix)
    ((run, run_headers),) = records[job_topic(Priority.HIGH, topic_prefix)]
    ((fact, fact_headers),) = records[events_topic(topic_prefix)]
    assert isinstance(run, RunJob)
    assert isinstance(fact, JobAccepted)
    assert run.job_id == fact.job_id == job_id
    assert run.trace_id == fact.trace_id == TRACE
    assert TRACE.encode() in run_headers["traceparent"]
    assert TRACE.encode() in fact_headers["traceparent"]
    assert run.data.attempt == 1
    assert run.data.user_id == fact.data.user_id == "alice"
    assert run.data.prompt == "Audit this contract"
    assert run.data.config.max_tokens == 64
    assert run.data.metadata == {"ticket": 7}
    for band in Priority:
        if band is not Priority.HIGH:
            assert records[job_topic(band, topic_prefix)] == []


async def test_each_band_goes_to_its_own_topic_and_without_traceparent_gets_a_fresh_trace(
    kit: GatewayKit,
) -> None:
    start_gateway, tokens, http, kafka_bootstrap, topic_prefix = kit
    gw = await start_gateway()
    ids = {}
    for band in Priority:
        async with http.post(
            f"{gw.url}/api/v1/jobs",
            json={"prompt": f"p {band}", "priority": band.value},
            headers=bearer(tokens("bob")),
        ) as resp:
            assert resp.status == 202
            ids[band] = (await resp.json())["job_id"]
    records = await topic_records(kafka_bootstrap, topic_prefix)
    traces = set()
    for band in Priority:
        ((run, _),) = records[job_topic(band, topic_prefix)]
        assert run.job_id == ids[band]
        traces.add(run.trace_id)
    assert len(traces) == 4
    assert len(records[events_topic(topic_prefix)]) == 4


BAD: list[tuple[str, bytes, int, str]] = [
    ("bad json", b'{"prompt": "x",', 400, "malformed-json"),
    ("not an object", b'["prompt"]', 422, "invalid-submission"),
    ("missing prompt", b'{"job_type": "analysis"}', 422, "invalid-submission"),
    ("empty prompt", b'{"prompt": ""}', 422, "invalid-submission"),
    ("unknown field", b'{"prompt": "x", "colour": "red"}', 422, "invalid-submission"),
    ("unknown priority", b'{"prompt": "x", "priority": "asap"}', 422, "invalid-submission"),
    ("bad config", b'{"prompt": "x", "config": {"max_tokens": 0}}', 422, "invalid-submission"),
    ("unknown job type", b'{"prompt": "x", "job_type": "poetry"}', 422, "unknown-job-type"),
    ("oversized prompt", json.dumps({"prompt": "y" * 101}).encode(), 413, "prompt-too-large"),
    # What consumers downstream could not store: checked after JSON decoding, everywhere.
    (
        "NUL escape in metadata",
        rb'{"prompt":"x","metadata":{"n":"\u0000"}}',
        422,
        "invalid-submission",
    ),
    (
        "NUL in a metadata key",
        rb'{"prompt":"x","metadata":{"a\u0000":1}}',
        422,
        "invalid-submission",
    ),
    (
        "NUL deep in metadata",
        rb'{"prompt":"x","metadata":{"a":[{"b":"\u0000"}]}}',
        422,
        "invalid-submission",
    ),
    ("NUL in the prompt", rb'{"prompt":"x\u0000"}', 422, "invalid-submission"),
    ("lone surrogate", rb'{"prompt":"x","metadata":{"s":"\ud800"}}', 400, "malformed-json"),
    ("NaN in metadata", b'{"prompt":"x","metadata":{"n":NaN}}', 422, "invalid-submission"),
    ("Infinity in metadata", b'{"prompt":"x","metadata":{"n":1e400}}', 422, "invalid-submission"),
    (
        "huge int in metadata",
        b'{"prompt":"x","metadata":{"n":9223372036854775808}}',
        422,
        "invalid-submission",
    ),
    (
        "huge seed",
        b'{"prompt":"x","config":{"seed":-9223372036854775809}}',
        422,
        "invalid-submission",
    ),
    (
        "too deep",
        b'{"prompt":"x","metadata":' + b"[" * 40 + b"]" * 40 + b"}",
        422,
        "invalid-submission",
    ),
    (
        "past the parser",
        b'{"prompt":"x","metadata":' + b"[" * 300 + b"]" * 300 + b"}",
        400,
        "malformed-json",
    ),
]


async def test_malformed_submissions_are_problems_and_publish_nothing(kit: GatewayKit) -> None:
    start_gateway, tokens, http, kafka_bootstrap, topic_prefix = kit
    gw = await start_gateway(gateway_max_prompt_chars=100, gateway_max_body_bytes=4096)
    headers = bearer(tokens("carol"), **{"Content-Type": "application/json"})
    for name, raw, status, kind in BAD:
        async with http.post(f"{gw.url}/api/v1/jobs", data=raw, headers=headers) as resp:
            assert resp.status == status, name
            assert resp.content_type == "application/problem+json", name
            problem: dict[str, Any] = await resp.json()
            assert problem["type"].endswith(f"/{kind}"), (name, problem)
            assert problem["status"] == status
            assert problem["errors"], name
            assert all("loc" in e and "msg" in e for e in problem["errors"])
    async with http.post(
        f"{gw.url}/api/v1/jobs", data=b'{"prompt": "' + b"z" * 8000 + b'"}', headers=headers
    ) as resp:
        assert resp.status == 413
        assert (await resp.json())["type"].endswith("/body-too-large")
    for auth, status in ((None, 401), ("Bearer forged.token.x", 401)):
        h = {"Authorization": auth} if auth else {}
        async with http.post(f"{gw.url}/api/v1/jobs", json={"prompt": "x"}, headers=h) as resp:
            assert resp.status == status
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    async with http.post(
        f"{gw.url}/api/v1/jobs", json={"prompt": "x"}, headers=bearer(tokens("dan", ("jobs:read",)))
    ) as resp:
        assert resp.status == 403
        assert (await resp.json())["type"].endswith("/forbidden")

    records = await topic_records(kafka_bootstrap, topic_prefix)
    assert {topic: len(values) for topic, values in records.items() if values} == {}
    assert records[control_topic(topic_prefix)] == []


async def test_unknown_routes_and_methods_are_problems(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway()
    async with http.get(f"{gw.url}/api/v1/nothing") as resp:
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"
    async with http.delete(f"{gw.url}/api/v1/jobs") as resp:
        assert resp.status == 405
        assert resp.content_type == "application/problem+json"
        assert "POST" in resp.headers["Allow"]


async def test_job_types_lists_every_type(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway()
    async with http.get(f"{gw.url}/api/v1/job-types") as resp:
        assert resp.status == 200
        types = {t["name"]: t for t in await resp.json()}
    assert {"analysis", "security_analysis"} <= set(types)
    assert all(isinstance(t["structured"], bool) and t["description"] for t in types.values())


async def test_ready_while_the_read_side_is_down(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway()
    async with http.get(f"{gw.url}/readyz") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["checks"] == {
        "kafka_producer": True,
        "events_view": True,
        "admission_group": True,
        "background_loops": True,
    }
    assert body["info"] == {"results_service": False}
    async with http.get(f"{gw.url}/metrics") as resp:
        text = await resp.text()
    assert (
        'streamjobs_gateway_http_requests_total{method="GET",route="/readyz",status="200"}' in text
    )
