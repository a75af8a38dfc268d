"""Retrying a job, the pure parts: the submission rebuilt from a stored spec asks exactly what
the original asked, a retry's records name the job they retry, its Idempotency-Key digest is
its own, and the gateway's decision on what the read side answers."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry

from services.gateway.admission import Asked, build_records
from services.gateway.admission_records import encode_record
from services.gateway.events import EventsReader, apply_event
from services.gateway.metrics import GatewayMetrics
from services.gateway.proxy import Answer, ResultsClient, Unreachable
from services.gateway.rejection import Rejection
from services.gateway.retry import _NOT_COPIED, _REBUILT, Retries, Retry, resubmission
from services.gateway.view import idempotent_job_id
from services.results.projection import JobRow, apply
from shared.api import JobInputs, JobSubmission
from shared.auth import SCOPE_ADMIN, SCOPE_READ, SCOPE_WRITE, Principal
from shared.contracts import JobAccepted, JobSpec, parse_record, utcnow
from shared.jobtypes import load_job_types
from shared.lifecycle import JobStatus
from tests.unit import contracts_v_prev as prev
from tests.unit.test_contracts_messages import BODY as MESSAGES_BODY
from tests.unit.test_gateway_records import consumed
from tests.unit.test_gateway_records import view as records_view

JOB_TYPES = load_job_types()
PROMPT_BODY: dict[str, Any] = {
    "prompt": "Audit this contract. [[sim tokens=20]]",
    "job_type": "security_analysis",
    "priority": "high",
    "config": {
        "model": "gpt-4o",
        "max_tokens": 64,
        "temperature": 0.2,
        "seed": 7,
        "stop": ["END"],
        "presence_penalty": 0.5,
    },
    "metadata": {"ticket": "SEC-42", "nested": [1, None, {"deep": True}]},
    "on_interrupt": "continue",
}
ALICE = Principal("alice", frozenset({SCOPE_READ, SCOPE_WRITE}))
BOB = Principal("bob", frozenset({SCOPE_READ, SCOPE_WRITE}))
ADMIN = Principal("root", frozenset({SCOPE_ADMIN}))


def accepted_spec(body: dict[str, Any], *, retry_of: str | None = None) -> JobSpec:
    """The spec of the job.accepted record the gateway writes for `body`, read back."""
    sub = JobSubmission.model_validate(body)
    accepted, _ = build_records(
        sub,
        user_id="alice",
        job_id=str(uuid.uuid4()),
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        submitted_at=utcnow(),
        asked=Asked.of(sub, retry_of),
    )
    record = parse_record(encode_record(accepted))
    assert isinstance(record, JobAccepted)
    return record.data


@pytest.mark.parametrize("body", [PROMPT_BODY, MESSAGES_BODY], ids=["prompt", "messages"])
def test_a_retry_asks_exactly_what_the_original_job_asked(body: dict[str, Any]) -> None:
    original = JobSubmission.model_validate(body)
    again = JobSubmission.model_validate(resubmission(accepted_spec(body)))
    assert again == original
    assert Asked.of(again) == Asked.of(original)


def test_every_field_of_a_job_spec_is_carried_by_a_retry_or_named_as_rebuilt() -> None:
    # A field added to JobSpec and JobSubmission is copied by name; one added to JobSpec
    # alone must be handled here on purpose, or retries would silently drop it.
    for name in JobSpec.model_fields:
        assert name in JobSubmission.model_fields or name in _REBUILT | _NOT_COPIED, name


def test_a_retrys_records_name_the_job_they_retry_and_old_consumers_still_read_them() -> None:
    sub = JobSubmission.model_validate(PROMPT_BODY)
    accepted, run = build_records(
        sub,
        user_id="alice",
        job_id="new",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        submitted_at=utcnow(),
        asked=Asked.of(sub, "original"),
    )
    for document in (accepted, run):
        wire = encode_record(document)
        parsed = parse_record(wire)
        assert isinstance(parsed, JobAccepted) or parsed.type == "job.run"
        assert parsed.to_bytes() == wire
        assert orjson.loads(wire)["data"]["retry_of"] == "original"
    assert prev.RunJob.model_validate_json(encode_record(run)).data.prompt == sub.prompt
    job = JobRow("new")
    record = parse_record(encode_record(accepted))
    assert isinstance(record, JobAccepted) and apply(job, record)
    assert job.retry_of == "original"


def test_an_idempotency_key_tells_a_retry_from_a_submission_and_from_another_retry() -> None:
    sub = JobSubmission.model_validate(PROMPT_BODY)
    plain = Asked.of(sub).digest(sub)
    first, again = Asked.of(sub, "job-a").digest(sub), Asked.of(sub, "job-a").digest(sub)
    other = Asked.of(sub, "job-b").digest(sub)
    assert first == again
    assert len({plain, first, other}) == 3


@pytest.mark.parametrize("whole", [True, False], ids=["parsed", "by-reader"])
def test_every_gateway_reads_a_keyed_retrys_digest_as_its_admission_computed_it(
    whole: bool,
) -> None:
    sub = JobSubmission.model_validate(PROMPT_BODY)
    asked = Asked.of(sub, "job-a")
    job_id = idempotent_job_id("alice", "k1")
    accepted, _ = build_records(
        sub,
        user_id="alice",
        job_id=job_id,
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        submitted_at=utcnow(),
        asked=asked,
    )
    view = records_view()
    wire = encode_record(accepted)
    if whole:
        record = parse_record(wire)
        assert isinstance(record, JobAccepted)
        apply_event(view, record)
    else:
        reader = EventsReader("127.0.0.1:1", "p", view, lookback_s=0)
        reader._handle({None: [consumed(wire, [("type", b"job.accepted")], job_id)]})
    entry = view.job(job_id)
    assert entry is not None and entry.fingerprint == asked.digest(sub)


class FakeResults(ResultsClient):
    """The read side's answer to the inputs read, or its absence."""

    def __init__(self, status: int, body: bytes = b"", *, down: bool = False) -> None:
        super().__init__("http://results.invalid", timeout_s=1)
        self.status, self.body, self.down = status, body, down
        self.asked: list[str] = []

    async def forward(self, method: str, path_qs: str, headers: Mapping[str, str]) -> Answer:
        self.asked.append(f"{method} {path_qs}")
        if self.down:
            raise Unreachable("refused")
        return Answer(self.status, self.body, CIMultiDict())


def retries(results: ResultsClient) -> Retries:
    return Retries(
        results,
        GatewayMetrics(CollectorRegistry()),
        job_types=JOB_TYPES,
        max_prompt_chars=10_000,
        max_depth=32,
        max_messages=256,
    )


def inputs(status: JobStatus, *, owner: str = "alice", forgotten: bool = False) -> bytes:
    spec = None if forgotten else accepted_spec(PROMPT_BODY)
    return (
        JobInputs(job_id="j-1", user_id=owner, status=status, spec=spec).model_dump_json().encode()
    )


async def test_a_failed_or_cancelled_job_is_retried_as_its_owners_job() -> None:
    for status in (JobStatus.FAILED, JobStatus.CANCELLED):
        results = FakeResults(200, inputs(status))
        retry = await retries(results).prepare(ALICE, "j/1", {})
        assert isinstance(retry, Retry)
        assert retry.owner == ALICE and retry.job_id == "j/1"
        assert retry.submission == JobSubmission.model_validate(PROMPT_BODY)
        assert results.asked == ["GET /api/v1/jobs/j%2F1/inputs"]
    # An admin's retry of alice's job is alice's job (her limits, her list, her bill).
    retry = await retries(FakeResults(200, inputs(JobStatus.FAILED))).prepare(ADMIN, "j-1", {})
    assert isinstance(retry, Retry) and retry.owner.user_id == "alice"


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.COMPLETED])
async def test_only_failed_or_cancelled_jobs_can_be_retried(status: JobStatus) -> None:
    refused = await retries(FakeResults(200, inputs(status))).prepare(ALICE, "j-1", {})
    assert isinstance(refused, Rejection)
    assert refused.status == 409 and refused.kind == "job-not-retryable"
    assert "only failed or cancelled jobs can be retried" in refused.detail
    assert refused.extra == {"status_of_job": status.value}


async def test_someone_elses_or_an_unknown_job_is_not_found_and_never_says_whose() -> None:
    cases = [
        (BOB, FakeResults(200, inputs(JobStatus.FAILED))),
        (ALICE, FakeResults(404, b'{"type": "job-not-found"}')),
    ]
    for who, results in cases:
        refused = await retries(results).prepare(who, "j-1", {})
        assert isinstance(refused, Rejection) and refused.status == 404
        assert "alice" not in refused.detail


async def test_a_token_the_read_side_refuses_to_read_with_is_forbidden_to_retry() -> None:
    refused = await retries(FakeResults(403, b"{}")).prepare(
        Principal("alice", frozenset({SCOPE_WRITE})), "j-1", {}
    )
    assert isinstance(refused, Rejection) and refused.status == 403
    assert SCOPE_READ in refused.detail


async def test_a_job_whose_inputs_retention_forgot_cannot_be_retried() -> None:
    results = FakeResults(200, inputs(JobStatus.FAILED, forgotten=True))
    refused = await retries(results).prepare(ALICE, "j-1", {})
    assert isinstance(refused, Rejection)
    assert refused.status == 409 and refused.kind == "job-inputs-forgotten"


async def test_a_read_side_that_does_not_answer_or_answers_garbage_is_a_503() -> None:
    for results in (
        FakeResults(0, down=True),
        FakeResults(500, b"oops"),
        FakeResults(200, b'{"job_id": 1}'),
    ):
        refused = await retries(results).prepare(ALICE, "j-1", {})
        assert isinstance(refused, Rejection) and refused.status == 503


async def test_a_retry_is_checked_again_against_the_bounds_of_today() -> None:
    small = Retries(
        FakeResults(200, inputs(JobStatus.FAILED)),
        GatewayMetrics(CollectorRegistry()),
        job_types=JOB_TYPES,
        max_prompt_chars=5,
        max_depth=32,
        max_messages=256,
    )
    refused = await small.prepare(ALICE, "j-1", {})
    assert isinstance(refused, Rejection) and refused.status == 413
