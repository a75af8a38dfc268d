"""What a submission must be before it is admitted: body, job type, size, trace, key.

Pure functions: a body in, a valid submission or a `Rejection` out; no I/O but the name
lookup of a webhook URL's host.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from services.gateway.rejection import Rejection
from services.gateway.storable import Unstorable, check_json, check_text
from shared.api import HEADER_IDEMPOTENCY_KEY, JobSubmission
from shared.contracts import new_trace_id
from shared.contracts.chat import text_chars
from shared.jobtypes import JobTypes
from shared.topics import HEADER_TRACEPARENT
from shared.webhooks import AllowList, Unresolved, WebhookRefused, parse_url, resolve_checked

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
KEY_PATTERN = r"^[!-~]{1,255}$"  # visible ASCII, as header values travel well
_KEY = re.compile(KEY_PATTERN)
# A slow name server delays the submission by at most this; the deliverer checks again.
_RESOLVE_TIMEOUT_S = 2.0


def invalid_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """A validation error's items as problem JSON `errors`, located in the body."""
    return _errors(exc)


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": ["body", *err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def _unstorable(submission: JobSubmission, max_depth: int) -> Unstorable | None:
    """The first value of the decoded body a consumer downstream could not read or store."""
    for name in ("prompt", "job_type"):
        value = getattr(submission, name)
        if value is not None and (bad := check_text(value, (name,))):
            return bad
    stored: dict[str, Any] = {  # each stored as jsonb
        "config": submission.config.model_dump(exclude_none=True),
        "metadata": submission.metadata,
    }
    if submission.messages is not None:
        stored["messages"] = [m.model_dump(exclude_none=True) for m in submission.messages]
    for name, value in stored.items():
        if bad := check_json(value, (name,), depth=2, max_depth=max_depth):
            return bad
    return None


def _too_large(submission: JobSubmission, max_prompt_chars: int) -> Rejection | None:
    """The prompt's bound, which for a messages job is on all of its text."""
    if submission.messages is not None:
        name, chars = "messages", text_chars(submission.messages)
        held = f"the messages hold {chars} characters of text"
    else:
        name, chars = "prompt", len(submission.prompt or "")
        held = f"the prompt has {chars} characters"
    if chars <= max_prompt_chars:
        return None
    return Rejection(
        413,
        "prompt-too-large",
        "Prompt too large",
        f"{held}; at most {max_prompt_chars}",
        [
            {
                "loc": ["body", name],
                "msg": f"at most {max_prompt_chars} characters",
                "type": "string_too_long",
            }
        ],
    )


def _invalid(loc: list[str | int], msg: str, kind: str) -> Rejection:
    return Rejection(
        422,
        "invalid-submission",
        "Invalid submission",
        f"{'.'.join(map(str, loc))}: {msg}",
        [{"loc": ["body", *loc], "msg": msg, "type": kind}],
    )


def _beyond_model(
    submission: JobSubmission, max_messages: int, job_types: JobTypes
) -> Rejection | None:
    """What the body's model cannot know: the messages' bound, the job type's own format."""
    if submission.messages is not None and len(submission.messages) > max_messages:
        return _invalid(
            ["messages"],
            f"{len(submission.messages)} messages; at most {max_messages}",
            "too_long",
        )
    job_type = job_types.get(submission.job_type)
    if job_type is not None and job_type.structured and submission.config.response_format:
        return _invalid(
            ["config", "response_format"],
            f"job type {submission.job_type!r} sets its own response_format (its output"
            " schema); leave it out or choose an unstructured job type",
            "response_format_not_allowed",
        )
    return None


def parse_submission(
    raw: bytes,
    *,
    max_prompt_chars: int,
    job_types: JobTypes,
    max_depth: int = 32,
    max_messages: int = 256,
) -> JobSubmission | Rejection:
    """Validate the body of `POST /api/v1/jobs` (`job_types`: the names loaded); `max_depth`
    bounds its JSON nesting."""
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
    # Checked after decoding: an escape such as \u0000 is a NUL like any other.
    bad = _unstorable(submission, max_depth)
    if bad is not None:
        return Rejection(
            422,
            "invalid-submission",
            "Invalid submission",
            f"{'.'.join(map(str, bad.loc))}: {bad.msg}",
            [bad.as_error()],
        )
    if (large := _too_large(submission, max_prompt_chars)) is not None:
        return large
    if submission.job_type not in job_types:
        known = ", ".join(sorted(job_types))
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
    return _beyond_model(submission, max_messages, job_types) or submission


async def check_webhook(url: str, allow: AllowList) -> Rejection | None:
    """A 422 for a webhook URL whose host is, or resolves to, an address not allowed.

    A name that does not resolve now is taken: the deliverer tries it again, and checks
    again the address it connects to.
    """
    try:
        async with asyncio.timeout(_RESOLVE_TIMEOUT_S):
            await resolve_checked(parse_url(url), allow)
    except WebhookRefused as exc:
        return Rejection(
            422,
            "webhook-url-refused",
            "Webhook URL refused",
            exc.reason,
            [{"loc": ["body", "webhook_url"], "msg": exc.reason, "type": "webhook_url_refused"}],
        )
    except (Unresolved, TimeoutError):
        return None
    return None


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


@dataclass(frozen=True, slots=True)
class Submission:
    """A request to submit, read: the valid job, its Idempotency-Key, its trace id."""

    job: JobSubmission
    key: str | None
    trace_id: str


def parse_request(
    raw: bytes,
    headers: Mapping[str, str],
    *,
    max_prompt_chars: int,
    max_depth: int,
    job_types: JobTypes,
    max_messages: int = 256,
) -> Submission | Rejection:
    """Body first, then the Idempotency-Key; a valid `traceparent` gives the trace id."""
    job = parse_submission(
        raw,
        max_prompt_chars=max_prompt_chars,
        job_types=job_types,
        max_depth=max_depth,
        max_messages=max_messages,
    )
    if isinstance(job, Rejection):
        return job
    trace_id = trace_id_from_traceparent(headers.get(HEADER_TRACEPARENT)) or new_trace_id()
    key = headers.get(HEADER_IDEMPOTENCY_KEY)
    if key is not None and (bad_key := check_idempotency_key(key)) is not None:
        return bad_key
    return Submission(job, key, trace_id)
