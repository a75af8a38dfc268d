"""The gateway's promise behind a 503: the admission request and the job command carry the
moment the gateway gives up on them (`accept_by`, half the publish timeout after submission),
and the 503 is answered only once that moment has passed."""

from __future__ import annotations

import time
from datetime import timedelta

from aiohttp.test_utils import TestClient, TestServer

from services.gateway.admission_records import encode_record
from services.gateway.routes import build_app
from shared.contracts import RunJob, parse_record, utcnow
from tests.unit.test_gateway_api import ADMISSION, FakeKafka, auth, make_api, no_checks

TIMEOUT_S = 0.4


async def test_a_queued_job_carries_its_submission_time_plus_half_the_publish_timeout() -> None:
    kafka = FakeKafka()
    api, registry = make_api(kafka, gateway_publish_timeout_s=TIMEOUT_S)
    app = build_app(api, registry, ready=no_checks, info=no_checks)
    async with TestClient(TestServer(app)) as c:
        resp = await c.post("/api/v1/jobs", json={"prompt": "x"}, headers=auth())
        assert resp.status == 202, await resp.text()
    (run,) = [e for _, e in kafka.sent if isinstance(e, RunJob)]
    assert run.data.accept_by == run.data.submitted_at + timedelta(seconds=TIMEOUT_S / 2)
    assert RunJob.model_validate_json(run.to_bytes()).data.accept_by == run.data.accept_by
    await api.drain()


async def test_a_503_is_answered_only_after_the_requests_accept_by() -> None:
    kafka = FakeKafka()
    kafka.fail = {ADMISSION}  # refused at once, as a broker error would be
    api, registry = make_api(kafka, gateway_publish_timeout_s=TIMEOUT_S)
    app = build_app(api, registry, ready=no_checks, info=no_checks)
    async with TestClient(TestServer(app)) as c:
        started = time.perf_counter()
        resp = await c.post("/api/v1/jobs", json={"prompt": "x"}, headers=auth())
        answered = utcnow()
        assert resp.status == 503
        assert time.perf_counter() - started >= TIMEOUT_S / 2 * 0.95
    (request,) = api.admission.link.asked  # type: ignore[attr-defined]
    run = parse_record(encode_record(request.run))
    assert isinstance(run, RunJob) and run.data.accept_by is not None
    assert answered.timestamp() >= request.accept_by == run.data.accept_by.timestamp()
    await api.drain()
