"""What a submission must be before anything is published: body, job type, size, trace, key.

Pure functions: a body in, a valid submission or a `Rejection` out; no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from shared.api import JobSubmission
from shared.contracts import JobAccepted, JobAcceptedData, RunJob, RunJobData
from shared.jobtypes import JOB_TYPES

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
KEY_PATTERN = r"^[!-~]{1,255}$"  # visible ASCII, as header values travel well
_KEY = re.compile(KEY_PATTERN)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a request is refused: the problem JSON to answer and the reason for metrics."""

    status: int
    kind: str
    title: str
    detail: str
    errors: list[dict[str, Any]] = field(default_factory=list)


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": ["body", *err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def parse_submission(raw: bytes, *, max_prompt_chars: int) -> JobSubmission | Rejection:
    """Validate the body of `POST /api/v1/jobs`."""
    try:
        submission = JobSubmission.model_validate_json(raw)
    except ValidationError as exc:
        errors = _errors(exc)
        if any(e["type"] == "json_invalid" for e in errors):
            return Rejection(
                400, "malformed-json", "Malformed JSON", "the body is not JSON", errors
            )
        return Rejection(
            422, "invalid-submission", "Invalid submission", "the body does not validate", errors
        )
    # PostgreSQL stores no NUL character in text or jsonb: refused here, not poison downstream.
    if b"\\u0000" in raw.lower() and _has_nul(submission.model_dump(mode="json")):
        return Rejection(
            422,
            "invalid-submission",
            "Invalid submission",
            "strings may not contain the NUL character (U+0000)",
            [{"loc": ["body"], "msg": "NUL character (U+0000)", "type": "nul_character"}],
        )
    if len(submission.prompt) > max_prompt_chars:
        return Rejection(
            413,
            "prompt-too-large",
            "Prompt too large",
            f"the prompt has {len(submission.prompt)} characters; at most {max_prompt_chars}",
            [
                {
                    "loc": ["body", "prompt"],
                    "msg": f"at most {max_prompt_chars} characters",
                    "type": "string_too_long",
                }
            ],
        )
    if submission.job_type not in JOB_TYPES:
        known = ", ".join(sorted(JOB_TYPES))
        return Rejection(
            422,
            "unknown-job-type",
            "Unknown job type",
            f"job_type {submission.job_type!r} is not one of: {known}",
            [
                {
                    "loc": ["body", "job_type"],
                    "msg": f"one of: {known}",
                    "type": "unknown_job_type",
                }
            ],
        )
    return submission


def trace_id_from_traceparent(value: str | None) -> str | None:
    """The trace id of a valid W3C `traceparent` header, else None."""
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None or match.group(1) == "0" * 32 or match.group(2) == "0" * 16:
        return None
    return match.group(1)


def check_idempotency_key(key: str) -> Rejection | None:
    if _KEY.match(key):
        return None
    return Rejection(
        400,
        "invalid-idempotency-key",
        "Invalid Idempotency-Key",
        "the key must be 1 to 255 visible ASCII characters",
    )


def build_records(
    submission: JobSubmission,
    *,
    user_id: str,
    job_id: str,
    trace_id: str,
    submitted_at: datetime,
) -> tuple[JobAccepted, RunJob]:
    """The lifecycle fact and the command of one accepted job, with one trace id."""
    spec: dict[str, Any] = {
        "user_id": user_id,
        "prompt": submission.prompt,
        "job_type": submission.job_type,
        "priority": submission.priority,
        "config": submission.config,
        "metadata": submission.metadata,
        "submitted_at": submitted_at,
    }
    # Built from a validated submission: constructed, not validated again (the hot path).
    accepted = JobAccepted.model_construct(
        job_id=job_id,
        occurred_at=submitted_at,
        trace_id=trace_id,
        data=JobAcceptedData.model_construct(**spec),
    )
    run = RunJob.model_construct(
        job_id=job_id,
        occurred_at=submitted_at,
        trace_id=trace_id,
        data=RunJobData.model_construct(**spec, attempt=1),
    )
    return accepted, run
