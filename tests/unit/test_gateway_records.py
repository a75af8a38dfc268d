"""What the gateway writes on the submit path and reads back on the events topic: the job's
records byte for byte as their models write them, the admission request carrying them as
JSON objects, and the events view fed the same from a header as from a whole parse."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import orjson
import pytest
from aiokafka import ConsumerRecord

from services.gateway.admission import Asked, build_records
from services.gateway.admission_records import AdmissionRequest, encode_record, reply_partition
from services.gateway.events import EventsReader
from services.gateway.submit import Submission, parse_request
from services.gateway.view import EventsView, idempotent_job_id
from shared.contracts import (
    JobAccepted,
    JobCompleted,
    JobCompletedData,
    RunJob,
    TokenUsage,
    parse_record,
    utcnow,
)
from shared.jobtypes import load_job_types
from shared.kafka import headers_for
from shared.lifecycle import JobStatus
from shared.topics import Priority

BODY = {
    "prompt": 'Audit "this" contract: é ✓',
    "job_type": "security_analysis",
    "priority": "high",
    "config": {"model": "gpt-4o-mini", "max_tokens": 64, "temperature": 0.2, "seed": 7},
    "metadata": {"ticket": "SEC-42", "nested": [1, 2.5, None, {"deep": True}]},
}


def submission() -> Submission:
    parsed = parse_request(
        orjson.dumps(BODY), {}, max_prompt_chars=1000, max_depth=32, job_types=load_job_types()
    )
    assert isinstance(parsed, Submission)
    return parsed


def records(job_id: str, user: str = "alice") -> tuple[dict[str, Any], dict[str, Any]]:
    now = utcnow()
    return build_records(
        submission().job,
        user_id=user,
        job_id=job_id,
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        submitted_at=now,
        accept_by=now + timedelta(seconds=5),
    )


def test_job_records_are_written_byte_for_byte_as_their_models_write_them() -> None:
    accepted, run = records(str(uuid.uuid4()))
    for document, model in ((accepted, JobAccepted), (run, RunJob)):
        wire = encode_record(document)
        parsed = parse_record(wire)
        assert isinstance(parsed, model)
        assert parsed.to_bytes() == wire


def test_an_admission_request_carries_its_records_as_objects_and_reads_back_the_same() -> None:
    accepted, run = records(str(uuid.uuid4()))
    request = AdmissionRequest(
        request_id=uuid.uuid4().hex,
        reply_to="gateway-0",
        user_id="alice",
        job_id=accepted["job_id"],
        keyed=False,
        digest="ab" * 16,
        job_type="security_analysis",
        priority=Priority.HIGH,
        submitted_at=1.5,
        accept_by=6.5,
        accepted=accepted,
        run=run,
        trace_id=accepted["trace_id"],
    )
    raw = request.to_bytes()
    assert isinstance(orjson.loads(raw)["accepted"], dict)  # no JSON text inside JSON
    again = AdmissionRequest.from_bytes(raw)
    assert encode_record(again.accepted) == encode_record(accepted)
    assert encode_record(again.run) == encode_record(run)
    assert again.priority is Priority.HIGH
    old_style = orjson.loads(raw) | {"accepted": encode_record(accepted).decode()}
    with pytest.raises(TypeError):
        AdmissionRequest.from_bytes(orjson.dumps(old_style))


def view() -> EventsView:
    return EventsView(
        submissions_per_minute=0,
        max_in_flight=0,
        window_s=3600,
        final_retention_s=600,
        max_jobs=100,
    )


def consumed(value: bytes, headers: list[tuple[str, bytes]], key: str) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(
        topic="p.events",
        partition=0,
        offset=0,
        timestamp=1_800_000_000_000,
        timestamp_type=0,
        key=key.encode(),
        value=value,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=0,
        headers=headers,
    )


def completed(job_id: str) -> JobCompleted:
    return JobCompleted(
        job_id=job_id,
        data=JobCompletedData(
            attempt=1,
            response="the whole answer " * 100,
            model="gpt-4o-mini",
            usage=TokenUsage(prompt_tokens=3, completion_tokens=300, total_tokens=303),
            chunks=10,
            last_seq=9,
            duration_ms=1.0,
        ),
    )


@pytest.mark.parametrize("with_headers", [True, False], ids=["by-header", "parsed-whole"])
def test_the_events_view_counts_the_same_whether_read_by_header_or_parsed_whole(
    with_headers: bool,
) -> None:
    reader = EventsReader("127.0.0.1:1", "p", view(), lookback_s=0)
    keyed = idempotent_job_id("alice", "k1")
    for job_id in (str(uuid.uuid4()), keyed):
        accepted = parse_record(encode_record(records(job_id)[0]))
        done = completed(job_id)
        for record in (accepted, done):
            assert isinstance(record, JobAccepted | JobCompleted)
            headers = headers_for(record) if with_headers else []
            reader._handle({None: [consumed(record.to_bytes(), headers, job_id)]})  # type: ignore[dict-item]
        entry = reader.view.job(job_id)
        assert entry is not None and entry.owner == "alice"
        assert entry.status is JobStatus.COMPLETED
        assert entry.priority is Priority.HIGH and entry.job_type == "security_analysis"
    assert reader.view.in_flight("alice") == 0
    # A keyed job's body fingerprint is what a repeated Idempotency-Key is compared with.
    keyed_entry, sub = reader.view.job(keyed), submission().job
    assert keyed_entry is not None
    assert keyed_entry.fingerprint == Asked.of(sub).digest(sub)
    assert reader.skipped == 0


def test_an_unreadable_acceptance_is_skipped_and_counted() -> None:
    reader = EventsReader("127.0.0.1:1", "p", view(), lookback_s=0)
    job_id = str(uuid.uuid4())
    bad = consumed(b'{"data": {"user_id": "alice"}}', [("type", b"job.accepted")], job_id)
    reader._handle({None: [bad]})  # type: ignore[dict-item]
    assert reader.view.job(job_id) is None
    assert reader.skipped == 1


def test_each_gateway_reads_the_replies_partition_its_instance_id_names() -> None:
    # StatefulSet pods and the fleet's instances end in their ordinal: one partition each.
    assert [reply_partition(f"streamjobs-gateway-{n}", 8) for n in range(10)] == [
        0, 1, 2, 3, 4, 5, 6, 7, 0, 1,
    ]  # fmt: skip
    # Any other id is hashed: stable, and within the topic.
    assert reply_partition("gw.example.internal", 8) == reply_partition("gw.example.internal", 8)
    assert 0 <= reply_partition("gw.example.internal", 8) < 8
