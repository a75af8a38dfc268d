"""Record contracts: round trips, forward compatibility, and the published schemas."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from shared.asyncapi import render
from shared.contracts import (
    JobCompleted,
    JobCompletedData,
    ModelConfig,
    RunJob,
    RunJobData,
    TokenChunk,
    TokenChunkData,
    TokenUsage,
    parse_record,
    utcnow,
)
from shared.topics import Priority

ROOT = Path(__file__).resolve().parents[2]


def _run_job() -> RunJob:
    return RunJob(
        job_id="j-1",
        data=RunJobData(
            user_id="alice",
            prompt="hello",
            job_type="analysis",
            priority=Priority.HIGH,
            config=ModelConfig(model="gpt-4o-mini", max_tokens=64),
            submitted_at=utcnow(),
        ),
    )


def test_record_round_trips_through_json_with_its_type() -> None:
    job = _run_job()
    parsed = parse_record(job.to_bytes())
    assert isinstance(parsed, RunJob)
    assert parsed == job


def test_record_with_fields_from_a_newer_version_still_parses() -> None:
    raw = json.loads(_run_job().to_bytes())
    raw["added_later"] = {"x": 1}
    raw["data"]["also_new"] = True
    parsed = parse_record(json.dumps(raw))
    assert isinstance(parsed, RunJob)
    assert parsed.job_id == "j-1"


def test_unknown_record_type_is_rejected() -> None:
    raw = json.loads(_run_job().to_bytes())
    raw["type"] = "job.exploded"
    with pytest.raises(ValidationError):
        parse_record(json.dumps(raw))


def test_chunk_built_without_validation_serialises_like_a_validated_one() -> None:
    now = utcnow()
    fields = {
        "attempt": 1,
        "seq": 3,
        "text": " hi",
        "tokens": 1,
        "first_token_at": now,
        "emitted_at": now,
    }
    fast = TokenChunk.model_construct(
        job_id="j", trace_id="t" * 32, data=TokenChunkData.model_construct(**fields)
    )
    checked = parse_record(fast.to_bytes())
    assert isinstance(checked, TokenChunk)
    assert checked.data == TokenChunkData(**fields)


def test_every_record_validates_against_its_published_json_schema() -> None:
    now = utcnow()
    records = [
        _run_job(),
        TokenChunk(
            job_id="j",
            data=TokenChunkData(
                attempt=1, seq=0, text="a", tokens=1, first_token_at=now, emitted_at=now
            ),
        ),
        JobCompleted(
            job_id="j",
            data=JobCompletedData(
                attempt=1,
                response="a",
                model="m",
                usage=TokenUsage(prompt_tokens=1, completion_tokens=1, total_tokens=2),
                chunks=1,
                last_seq=0,
                duration_ms=1.0,
            ),
        ),
    ]
    for record in records:
        schema = json.loads((ROOT / "docs" / "schemas" / f"{record.type}.json").read_text())
        jsonschema.validate(json.loads(record.to_bytes()), schema)


def test_published_schemas_and_asyncapi_match_the_models() -> None:
    stale = [
        str(path.relative_to(ROOT))
        for path, text in render(ROOT / "docs").items()
        if not path.exists() or path.read_text() != text
    ]
    assert not stale, f"run `make schemas`: out of date {stale}"
