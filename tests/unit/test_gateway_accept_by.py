"""The gateway's promise behind a 503: the job command carries the moment the gateway gives
up on it (`accept_by`), and the 503 is answered only once that moment has passed."""

from __future__ import annotations

import time
from datetime import timedelta

from aiohttp.test_utils import TestClient, TestServer

from services.gateway.routes import build_app
from shared.contracts import Envelope, RunJob, utcnow
from tests.unit.test_gateway_api import FakeKafka, auth, make_api, no_checks

TIMEOUT_S = 0.4


class RecordingKafka(FakeKafka):
    """Also keeps the records it was handed, taken or not."""

    def __init__(self) -> None:
        super().__init__()
        self.tried: list[RunJob] = []

    async def publish(self, topic: str, envelope: Envelope) -> None:
        if isinstance(envelope, RunJob):
            self.tried.append(envelope)
        await super().publish(topic, envelope)


async def test_a_queued_job_carries_its_submission_time_plus_the_publish_timeout() -> None:
    kafka = RecordingKafka()
    api, registry = make_api(kafka, gateway_publish_timeout_s=TIMEOUT_S)
    app = build_app(api, registry, ready=no_checks, info=no_checks)
    async with TestClient(TestServer(app)) as c:
        resp = await c.post("/api/v1/jobs", json={"prompt": "x"}, headers=auth())
        assert resp.status == 202, await resp.text()
    (run,) = kafka.tried
    assert run.data.accept_by == run.data.submitted_at + timedelta(seconds=TIMEOUT_S)
    assert RunJob.model_validate_json(run.to_bytes()).data.accept_by == run.data.accept_by
    await api.drain()


async def test_a_503_is_answered_only_after_the_commands_accept_by() -> None:
    kafka = RecordingKafka()
    kafka.fail = {"job.run"}  # refused at once, as a broker error would be
    api, registry = make_api(kafka, gateway_publish_timeout_s=TIMEOUT_S)
    app = build_app(api, registry, ready=no_checks, info=no_checks)
    async with TestClient(TestServer(app)) as c:
        started = time.perf_counter()
        resp = await c.post("/api/v1/jobs", json={"prompt": "x"}, headers=auth())
        answered = utcnow()
        assert resp.status == 503
        assert time.perf_counter() - started >= TIMEOUT_S * 0.95
    (run,) = kafka.tried
    assert run.data.accept_by is not None and answered >= run.data.accept_by
    await api.drain()
