"""An OpenAI chat completion request as the body of a job submission, and its headers.

Pure: the decoded request and its headers in, the `POST /api/v1/jobs` body (bytes) and the
headers its admission reads out, or a `Rejection`. The submission is then validated and
admitted exactly as one sent to `POST /api/v1/jobs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from services.gateway.rejection import Rejection
from shared.api import HEADER_IDEMPOTENCY_KEY, RequestConfig
from shared.topics import HEADER_TRACEPARENT

HEADER_PRIORITY = "X-Streamjobs-Priority"
HEADER_JOB_TYPE = "X-Streamjobs-Job-Type"
HEADER_ON_INTERRUPT = "X-Streamjobs-On-Interrupt"
HEADER_JOB_ID = "X-Streamjobs-Job-Id"
# metadata key -> (submission field, header); the header wins, the key is not stored.
META_KEYS = {
    "streamjobs_priority": ("priority", HEADER_PRIORITY),
    "streamjobs_job_type": ("job_type", HEADER_JOB_TYPE),
    "streamjobs_on_interrupt": ("on_interrupt", HEADER_ON_INTERRUPT),
    "streamjobs_idempotency_key": (None, HEADER_IDEMPOTENCY_KEY),
}
CONFIG_FIELDS = frozenset(RequestConfig.model_fields)
# Accepted and not acted on: they change nothing of the answer.
IGNORED_FIELDS = frozenset({"store"})


@dataclass(frozen=True, slots=True)
class ChatRequest:
    body: bytes  # a JobSubmission's JSON
    headers: dict[str, str]  # what admission reads: Idempotency-Key, traceparent
    model: str
    stream: bool
    include_usage: bool


def _bad(message: str, param: str | None, kind: str = "invalid-submission") -> Rejection:
    errors = [{"loc": ["body", param], "msg": message, "type": kind}] if param else []
    return Rejection(400, kind, "Invalid request", message, errors)


def _stream_options(value: Any) -> bool | Rejection:
    if value is None:
        return False
    if not isinstance(value, dict) or set(value) - {"include_usage", "include_obfuscation"}:
        return _bad("stream_options takes include_usage (a boolean)", "stream_options")
    usage = value.get("include_usage", False)
    if not isinstance(usage, bool):
        return _bad("include_usage must be a boolean", "stream_options")
    return usage


def read_request(
    request: Any, headers: Mapping[str, str], *, default_job_type: str
) -> ChatRequest | Rejection:
    """The job of one `POST /v1/chat/completions` body (decoded JSON)."""
    if not isinstance(request, dict):
        return _bad("the body must be a JSON object (a chat completion request)", None)
    unknown = sorted(
        set(request)
        - CONFIG_FIELDS
        - IGNORED_FIELDS
        - {"messages", "stream", "stream_options", "metadata"}
    )
    if unknown:
        return _bad(f"unsupported parameter {unknown[0]!r}", unknown[0], "unsupported-parameter")
    model = request.get("model")
    if not isinstance(model, str) or not model:
        return _bad("model is required: one of GET /v1/models", "model")
    if not isinstance(request.get("messages"), list):
        return _bad("messages is required: the conversation, a list of messages", "messages")
    stream = request.get("stream")
    if stream is not None and not isinstance(stream, bool):
        return _bad("stream must be a boolean", "stream")
    usage = _stream_options(request.get("stream_options"))
    if isinstance(usage, Rejection):
        return usage
    metadata = request.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        return _bad("metadata must be an object of strings", "metadata")
    metadata = dict(metadata)
    submission: dict[str, Any] = {
        "messages": request.get("messages"),
        "config": {
            name: value
            for name, value in request.items()
            if name in CONFIG_FIELDS and value is not None
        },
        "job_type": default_job_type,
    }
    out: dict[str, str] = {}
    if HEADER_TRACEPARENT in headers:
        out[HEADER_TRACEPARENT] = headers[HEADER_TRACEPARENT]
    for key, (field, header) in META_KEYS.items():
        value = headers.get(header, metadata.pop(key, None))
        metadata.pop(key, None)
        if value is None:
            continue
        if not isinstance(value, str):
            return _bad(f"metadata.{key} must be a string", "metadata")
        if field is None:
            out[header] = value
        else:
            submission[field] = value.strip().lower() if field != "job_type" else value
    submission["metadata"] = metadata
    return ChatRequest(orjson.dumps(submission), out, model, bool(stream), usage)
