"""The gateway's handlers with a fake publisher and the real decider in-process (no broker):
Kafka failures, internal errors, and the OpenAPI document staying true to the routes served."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiokafka.errors import KafkaTimeoutError
from prometheus_client import CollectorRegistry

from services.gateway.admission_records import (
    AdmissionRequest,
    Decision,
    Outcome,
    encode_record,
)
from services.gateway.app import build_gateway
from services.gateway.decider import decide
from services.gateway.handlers import Gateway
from services.gateway.metrics import GatewayMetrics
from services.gateway.proxy import ResultsClient
from services.gateway.routes import build_app, build_document
from services.gateway.settings import GatewaySettings
from services.gateway.view import EventsView
from shared.auth import issue_token
from shared.contracts import Envelope, parse_record
from shared.topics import events_topic, job_topic
from shared.verifier import TokenVerifier

SECRET = "unit-secret-at-least-32-bytes-long"


ADMISSION = "admission"  # in `FakeKafka.fail`: admission requests are not taken


class FakeKafka:
    """Records what is published; fails the records whose type is in `fail`."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Envelope]] = []
        self.fail: set[str] = set()

    async def publish(self, topic: str, envelope: Envelope) -> None:
        if envelope.type in self.fail:
            raise KafkaTimeoutError()
        self.sent.append((topic, envelope))


class InProcessAdmission:
    """The admission link with the owner in-process: the real decider over the view, and an
    accepted job's two records recorded as its committed transaction would write them."""

    def __init__(self, view: EventsView, kafka: FakeKafka, prefix: str) -> None:
        self.view = view
        self.kafka = kafka
        self.prefix = prefix
        self.asked: list[AdmissionRequest] = []

    async def ask(self, request: AdmissionRequest, timeout_s: float) -> Decision | None:
        self.asked.append(request)
        if ADMISSION in self.kafka.fail:
            raise KafkaTimeoutError()
        now = time.time()
        decision = decide(self.view, request, now=now, appended_at=now)
        if decision.outcome is Outcome.ACCEPTED:
            accepted = parse_record(encode_record(request.accepted))
            self.kafka.sent.append((events_topic(self.prefix), accepted))
            run = parse_record(encode_record(request.run))
            self.kafka.sent.append((job_topic(request.priority, self.prefix), run))
        return decision


def make_api(
    kafka: FakeKafka, *, sse: bool = False, **overrides: Any
) -> tuple[Gateway, CollectorRegistry]:
    settings = GatewaySettings(
        streamjobs_auth_secret=SECRET,
        results_url="http://127.0.0.1:1",
        notifier_sse_url="http://127.0.0.1:1" if sse else "",
        **overrides,
    )
    registry = CollectorRegistry()
    view = EventsView(
        submissions_per_minute=0,
        max_in_flight=0,
        window_s=3600,
        final_retention_s=60,
        max_jobs=100,
    )
    api = build_gateway(
        settings,
        GatewayMetrics(registry),
        view,
        kafka.publish,
        ResultsClient(settings.results_url, timeout_s=1),
        verifier=TokenVerifier.from_settings(settings),
        link=InProcessAdmission(view, kafka, settings.topic_prefix),
    )
    return api, registry


async def no_checks() -> dict[str, bool]:
    return {}


@pytest.fixture
async def kafka() -> FakeKafka:
    return FakeKafka()


@pytest.fixture
async def client(kafka: FakeKafka) -> AsyncIterator[tuple[TestClient[Any, Any], Gateway]]:
    api, registry = make_api(kafka)
    app = build_app(api, registry, ready=no_checks, info=no_checks)
    async with TestClient(TestServer(app)) as c:
        yield c, api
    await api.drain()


def auth(user: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(SECRET, user)}"}


async def test_kafka_down_is_a_503_and_nothing_is_counted_or_published(
    client: tuple[TestClient[Any, Any], Gateway], kafka: FakeKafka
) -> None:
    c, api = client
    kafka.fail = {ADMISSION}
    resp = await c.post("/api/v1/jobs", json={"prompt": "x"}, headers=auth())
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert (await resp.json())["type"].endswith("/kafka-unavailable")
    assert kafka.sent == []
    assert api.view.jobs == 0 and api.view.in_flight("alice") == 0
    kafka.fail = set()  # the broker is back: the same key is a new job, once
    resp = await c.post(
        "/api/v1/jobs", json={"prompt": "x"}, headers={**auth(), "Idempotency-Key": "k1"}
    )
    assert resp.status == 202
    assert [e.type for _, e in kafka.sent] == ["job.accepted", "job.run"]


async def test_an_unexpected_error_is_a_500_problem_without_internals(
    client: tuple[TestClient[Any, Any], Gateway], kafka: FakeKafka, caplog: pytest.LogCaptureFixture
) -> None:
    c, api = client

    class Broken(InProcessAdmission):
        async def ask(self, request: AdmissionRequest, timeout_s: float) -> Decision | None:
            raise ZeroDivisionError("secret internals")

    api.admission.link = Broken(api.view, kafka, "streamjobs")
    resp = await c.post("/api/v1/jobs", json={"prompt": "x"}, headers=auth())
    assert resp.status == 500
    assert resp.content_type == "application/problem+json"
    text = await resp.text()
    assert "secret" not in text and "ZeroDivision" not in text
    assert any(r.exc_info for r in caplog.records)


@pytest.mark.parametrize("sse", [False, True])
def test_every_route_is_documented_and_every_documented_route_is_served(sse: bool) -> None:
    api, registry = make_api(FakeKafka(), sse=sse)
    if sse:
        api.sse = object()  # type: ignore[assignment]  # only its presence matters here
    app = build_app(api, registry, ready=no_checks, info=no_checks)
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
    }
    document = build_document(sse=sse)
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert served == documented


def test_the_document_is_openapi_3_1_with_resolvable_refs_and_bearer_security() -> None:
    document = build_document()
    assert document["openapi"].startswith("3.1")
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    schemas = document["components"]["schemas"]
    refs: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.add(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in schemas
    for path, item in document["paths"].items():
        for method, op in item.items():
            assert op["responses"], (method, path)
            if op.get("security", document["security"]):
                assert "401" in op["responses"], (method, path)


async def test_the_document_is_served(client: tuple[TestClient[Any, Any], Gateway]) -> None:
    c, _ = client
    resp = await c.get("/api/v1/openapi.json")
    assert resp.status == 200
    assert (await resp.json())["paths"]
