"""What the streamer says about records it cannot run: the job id, the failed fact, the checks."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from services.streamer.intake import Unrunnable, check_runnable
from services.streamer.metrics import StreamerMetrics
from services.streamer.rejects import (
    MAX_ORIGINAL_BYTES,
    Rejected,
    Rejects,
    dead_letter_record,
    failed_event,
    printable,
)
from services.streamer.streamed import estimate_prompt_tokens, nothing_streamed, streamed_so_far
from services.streamer.upstream import UpstreamUsage, messages_for
from shared.contracts import ModelConfig, RunJob, RunJobData, parse_record
from shared.deadletter import recover_job_id
from shared.jobtypes import load_job_types
from shared.topics import Priority

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
TYPES = load_job_types()


def job(**data: object) -> RunJob:
    values: dict[str, object] = {
        "user_id": "alice",
        "prompt": "Explain Kafka.",
        "job_type": "analysis",
        "priority": Priority.NORMAL,
        "config": ModelConfig(),
        "submitted_at": NOW,
        **data,
    }
    return RunJob(job_id="j1", data=RunJobData.model_validate(values))


def test_the_job_id_comes_from_the_key_first_then_from_the_json() -> None:
    value = json.dumps({"job_id": "from-json"}).encode()
    assert recover_job_id(b"from-key", value) == "from-key"
    assert recover_job_id(None, value) == "from-json"
    assert recover_job_id(b"\xff\xfe", value) == "from-json"  # a key that is not UTF-8


@pytest.mark.parametrize(
    "value",
    [
        b"\xffnot json",
        b'{"job_id": 42}',
        b'{"job_id": ""}',
        b'{"job_id": "a\\ud800b"}',  # a lone surrogate cannot travel as a Kafka key
        b"[" * 100_000,  # nesting too deep for the JSON parser
        json.dumps({"job_id": "x" * 10_000}).encode(),
        b'["job_id"]',
    ],
    ids=["bytes", "number", "empty", "surrogate", "deep", "huge", "not-an-object"],
)
def test_no_usable_job_id_is_none(value: bytes) -> None:
    assert recover_job_id(None, value) is None


def test_the_failed_fact_of_a_rejected_record_keeps_its_trace_and_attempt() -> None:
    raw = json.dumps(
        {"job_id": "j1", "trace_id": "ab" * 16, "data": {"attempt": 3, "prompt": ["x"]}}
    ).encode()
    rejected = Rejected(b"j1", raw, "invalid record: bad prompt", "ValidationError", "t", 2, 7)
    event = failed_event(rejected, "j1")
    parsed = parse_record(event.to_bytes())
    assert parsed.job_id == "j1" and parsed.trace_id == "ab" * 16
    assert parsed.type == "job.failed"
    assert parsed.data.attempt == 3
    assert parsed.data.error_type == "ValidationError"
    assert "bad prompt" in parsed.data.reason and not parsed.data.retriable
    # The same record rejected again (another read) gives the same event id: deduplicable.
    assert failed_event(rejected, "j1").event_id == event.event_id


def test_a_failed_fact_from_garbage_still_serialises() -> None:
    rejected = Rejected(None, b"\x00\xff", "weird \ud800 reason", "ValueError", "t", 0, 0)
    event = failed_event(rejected, "j1")
    assert event.data.attempt == 1
    assert parse_record(event.to_bytes()).data.reason.startswith("rejected at intake: weird ?")


def test_reasons_are_made_publishable_and_bounded() -> None:
    assert printable("a\ud800b") == "a?b"
    assert len(printable("x" * 10_000)) == 500


def test_records_validation_lets_through_but_that_cannot_run_are_unrunnable() -> None:
    check_runnable(job(), NOW, 3600)
    check_runnable(job(not_before=NOW + timedelta(seconds=30)), NOW, 3600)
    with pytest.raises(Unrunnable, match="time zone"):
        check_runnable(job(submitted_at=datetime(2026, 1, 1)), NOW, 3600)  # noqa: DTZ001
    with pytest.raises(Unrunnable, match="time zone"):
        check_runnable(job(not_before=datetime(2026, 1, 1)), NOW, 3600)  # noqa: DTZ001
    with pytest.raises(Unrunnable, match="ahead"):
        check_runnable(job(not_before=NOW + timedelta(days=400)), NOW, 3600)
    with pytest.raises(Unrunnable, match="job id"):
        check_runnable(job().model_copy(update={"job_id": ""}), NOW, 3600)


def test_a_cut_short_attempt_without_upstream_usage_is_counted_and_flagged() -> None:
    data = job(prompt="x" * 401).data
    streamed = streamed_so_far(
        data, model="m", last_seq=9, tokens=300, reported=None, job_types=TYPES
    )
    chars = sum(len(m["content"]) for m in messages_for(data, TYPES))
    assert streamed.estimated
    assert streamed.usage.completion_tokens == 300
    assert (
        streamed.usage.prompt_tokens == math.ceil(chars / 4) == estimate_prompt_tokens(data, TYPES)
    )
    assert streamed.usage.total_tokens == streamed.usage.prompt_tokens + 300
    assert (streamed.model, streamed.last_seq) == ("m", 9)


def test_the_upstreams_usage_wins_when_it_was_sent() -> None:
    data = job().data
    streamed = streamed_so_far(
        data,
        model="m",
        last_seq=3,
        tokens=10,
        reported=UpstreamUsage(7, 11, 18),
        job_types=TYPES,
    )
    assert not streamed.estimated
    assert (streamed.usage.prompt_tokens, streamed.usage.completion_tokens) == (7, 11)


def test_an_attempt_that_never_reached_the_upstream_used_nothing() -> None:
    streamed = nothing_streamed(job().data)
    assert streamed.last_seq == -1 and streamed.usage.total_tokens == 0
    assert not streamed.estimated and streamed.model == ModelConfig().model


def test_the_dlq_copy_of_a_huge_record_is_bounded_and_says_so() -> None:
    value = b'"\x00' * 400_000
    rejected = Rejected(b"j1", value, "invalid record: too big", "ValidationError", "t", 1, 9)
    record = dead_letter_record(rejected, "j1")
    assert len(record.to_bytes()) < 1_000_000, "fits in one Kafka record"
    assert record.data.reason.endswith(f"(original cut to {MAX_ORIGINAL_BYTES} of 800000 bytes)")
    assert (record.data.source_partition, record.data.source_offset) == (1, 9)
    assert record.job_id == "j1"
    assert dead_letter_record(rejected, None).job_id == "unknown"


def test_bad_control_records_wait_for_the_dlq_in_a_bounded_queue_and_overflow_is_counted() -> None:
    registry = CollectorRegistry()
    # The writer loop is not running: nothing is sent, so no producer is needed.
    rejects = Rejects(None, "p", StreamerMetrics(registry), first_delay_s=0.1, max_delay_s=1.0)  # type: ignore[arg-type]
    for offset in range(150):
        rejects.reject_control(
            Rejected(None, b"x" * 1_000_000, "bad", "ValidationError", "c", 0, offset)
        )
    skipped = registry.get_sample_value(
        "streamjobs_streamer_control_records_skipped_total", {"reason": "ValidationError"}
    )
    dropped = registry.get_sample_value("streamjobs_streamer_control_dead_letters_dropped_total")
    assert (skipped, dropped) == (150, 50)


def test_a_job_type_without_a_system_prompt_sends_the_messages_as_given() -> None:
    chat = job(prompt="Hello there").data.model_copy(update={"job_type": "chat"})
    assert messages_for(chat, TYPES) == [{"role": "user", "content": "Hello there"}]
    analysis = chat.model_copy(update={"job_type": "analysis"})
    assert [m["role"] for m in messages_for(analysis, TYPES)] == ["system", "user"]
