"""The OpenAPI 3.1 document of the public REST API, built from the models in shared/api.py.

The schemas are the same pydantic models the gateway validates with and the results
service answers with; a unit test checks that every route served is documented here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from services.gateway.submit import KEY_PATTERN
from shared import __version__
from shared.api import (
    API_PREFIX,
    HEADER_IDEMPOTENCY_KEY,
    Analytics,
    CancelAccepted,
    JobAcceptedView,
    JobPage,
    JobResult,
    JobSubmission,
    JobTypeView,
    JobView,
    StreamSnapshot,
)
from shared.jobtypes import JOB_TYPES
from shared.lifecycle import JobStatus
from shared.topics import Priority

REF = "#/components/schemas/{model}"
NO_NUL = "^[^\\u0000]*$"
PROBLEM_JSON = "application/problem+json"
STORABLE_RULE = (
    "no string (key or value, anywhere) may contain U+0000 (raw or as the JSON escape) or a"
    " lone surrogate; integers fit in signed 64 bits; numbers are finite (no NaN, no Infinity)"
)


class ProblemError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """RFC 9457 problem details; `type` is stable per kind of error."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="a URI naming the kind of error")
    title: str
    status: int
    detail: str | None = None
    errors: list[ProblemError] | None = Field(
        default=None, description="what did not validate, for 400/413/422"
    )


_MODELS: list[tuple[type[BaseModel], JsonSchemaMode]] = [
    (JobSubmission, "validation"),
    (JobAcceptedView, "serialization"),
    (JobView, "serialization"),
    (JobPage, "serialization"),
    (StreamSnapshot, "serialization"),
    (JobResult, "serialization"),
    (Analytics, "serialization"),
    (JobTypeView, "serialization"),
    (CancelAccepted, "serialization"),
    (Problem, "serialization"),
]

_PROBLEM_TITLES = {
    400: "Malformed request (e.g. the body is not JSON, or NUL in the path or query)",
    401: "Missing, malformed or expired bearer token",
    403: "The token lacks the scope this needs",
    404: "No such job, or not the caller's",
    409: "Conflict with the job's state or an Idempotency-Key's first use",
    413: "Body or prompt too large",
    414: "Request target (path and query) too long",
    422: "The request does not validate",
    429: "Rate limited: submissions or cancels per minute, jobs in flight, live streams"
    " per user (see Retry-After)",
    503: "A dependency (Kafka, the read side, the notifier) is unavailable, or the gateway is"
    " at a bound (Idempotency-Keys, repairs, live stream slots); see Retry-After",
}


def _schemas() -> tuple[dict[Any, dict[str, Any]], dict[str, Any]]:
    refs, top = models_json_schema(_MODELS, ref_template=REF)
    return dict(refs), dict(top.get("$defs", {}))


def _content(schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
    return {media: {"schema": schema}}


def _problems(*codes: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for code in codes:
        response: dict[str, Any] = {
            "description": _PROBLEM_TITLES[code],
            "content": _content({"$ref": REF.format(model="Problem")}, PROBLEM_JSON),
        }
        if code in (429, 503):
            response["headers"] = {
                "Retry-After": {
                    "description": "seconds to wait before trying again",
                    "schema": {"type": "integer", "minimum": 0},
                }
            }
        out[str(code)] = response
    return out


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


_JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1},
}
_SECURED: list[dict[str, list[str]]] = [{"bearerAuth": []}]
_READ_ERRORS = (400, 401, 403, 404, 414, 503)


def build_document(
    *, sse: bool = False, max_prompt_chars: int | None = None, max_json_depth: int = 32
) -> dict[str, Any]:
    refs, schemas = _schemas()

    def ref(model: type[BaseModel], mode: JsonSchemaMode = "serialization") -> dict[str, Any]:
        return dict(refs[(model, mode)])

    # What the gateway checks beyond the model: the known job types, the prompt's bound.
    submission = schemas[ref(JobSubmission, "validation")["$ref"].rsplit("/", 1)[1]]
    submission["properties"]["job_type"]["enum"] = sorted(JOB_TYPES)
    submission["properties"]["prompt"]["pattern"] = NO_NUL
    if max_prompt_chars is not None:
        submission["properties"]["prompt"]["maxLength"] = max_prompt_chars
    for name, schema in schemas.items():
        if name.startswith("ModelConfig"):
            schema["properties"]["model"]["pattern"] = NO_NUL
    submission["properties"]["metadata"]["description"] += "; " + STORABLE_RULE
    submission["description"] = (
        submission.get("description", "").rstrip(".") + ". Refused with 422 unless "
        f"every consumer can store it: {STORABLE_RULE} (nesting counts the body object as 1,"
        f" at most {max_json_depth} levels)."
    )

    def ok(model: type[BaseModel] | None, description: str, code: str = "200") -> dict[str, Any]:
        response: dict[str, Any] = {"description": description}
        if model is not None:
            response["content"] = _content(ref(model))
        return {code: response}

    statuses = {"type": "string", "enum": [s.value for s in JobStatus]}
    priorities = {"type": "string", "enum": [p.value for p in Priority]}
    moment = {"type": "string", "format": "date-time"}
    jobs = f"{API_PREFIX}/jobs"
    job = f"{jobs}/{{job_id}}"
    paths: dict[str, Any] = {
        jobs: {
            "post": {
                "operationId": "submitJob",
                "summary": "Submit a job: it is queued on its priority band's topic",
                "security": _SECURED,
                "parameters": [
                    {
                        "name": HEADER_IDEMPOTENCY_KEY,
                        "in": "header",
                        "required": False,
                        "description": "the same key and body give the same job, on any instance",
                        "schema": {"type": "string", "pattern": KEY_PATTERN},
                    },
                    {
                        "name": "traceparent",
                        "in": "header",
                        "required": False,
                        "description": "W3C trace context; its trace id follows the job",
                        "schema": {"type": "string"},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": _content(ref(JobSubmission, "validation")),
                },
                "responses": {
                    **ok(JobAcceptedView, "Accepted: the job is queued", "202"),
                    **_problems(400, 401, 403, 409, 413, 414, 422, 429, 503),
                },
            },
            "get": {
                "operationId": "listJobs",
                "summary": "The caller's jobs, newest first (an admin sees everyone's)",
                "security": _SECURED,
                "parameters": [
                    _query("status", statuses, "only jobs in this status"),
                    _query("job_type", {"type": "string"}, "only jobs of this type"),
                    _query("priority", priorities, "only jobs of this band"),
                    _query("since", moment, "submitted at or after"),
                    _query("until", moment, "submitted before"),
                    _query("user_id", {"type": "string"}, "admin only: one user's jobs"),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 200},
                        "page size",
                    ),
                    _query("cursor", {"type": "string"}, "`next_cursor` of the previous page"),
                ],
                "responses": {
                    **ok(JobPage, "A page of jobs"),
                    **_problems(400, 401, 403, 414, 422, 503),
                },
            },
        },
        job: {
            "get": {
                "operationId": "getJob",
                "summary": "A job's status, attempt, queue position and progress",
                "security": _SECURED,
                "parameters": [_JOB_ID],
                "responses": {**ok(JobView, "The job"), **_problems(*_READ_ERRORS)},
            }
        },
        f"{job}/stream": {
            "get": {
                "operationId": "getJobStream",
                "summary": "The text of the current attempt so far and its last chunk seq",
                "security": _SECURED,
                "parameters": [_JOB_ID],
                "responses": {
                    **ok(StreamSnapshot, "The text so far"),
                    **_problems(*_READ_ERRORS),
                },
            }
        },
        f"{job}/result": {
            "get": {
                "operationId": "getJobResult",
                "summary": "The final result: response, usage, cost and timings",
                "security": _SECURED,
                "parameters": [_JOB_ID],
                "responses": {
                    **ok(JobResult, "The result"),
                    **_problems(400, 401, 403, 404, 409, 414, 503),
                },
            }
        },
        f"{job}/cancel": {
            "post": {
                "operationId": "cancelJob",
                "summary": "Cancel a queued or running job (idempotent)",
                "security": _SECURED,
                "parameters": [_JOB_ID],
                "responses": {
                    **ok(CancelAccepted, "The cancel is on its way", "202"),
                    **_problems(400, 401, 403, 404, 409, 414, 429, 503),
                },
            }
        },
        f"{API_PREFIX}/analytics": {
            "get": {
                "operationId": "getAnalytics",
                "summary": "Counts, rates, percentiles, tokens and cost, grouped",
                "security": _SECURED,
                "parameters": [
                    _query("since", moment, "from (default: a day ago)"),
                    _query("until", moment, "to (default: now)"),
                    _query(
                        "group_by",
                        {"type": "string"},
                        "comma-separated: model, job_type, priority, user_id, bucket",
                    ),
                    _query(
                        "bucket",
                        {"type": "string", "enum": ["minute", "hour", "day"]},
                        "time bucket when grouping by bucket",
                    ),
                ],
                "responses": {
                    **ok(Analytics, "The figures"),
                    **_problems(400, 401, 403, 414, 422, 503),
                },
            }
        },
        f"{API_PREFIX}/job-types": {
            "get": {
                "operationId": "listJobTypes",
                "summary": "The job types a submission may name",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Every job type",
                        "content": _content({"type": "array", "items": ref(JobTypeView)}),
                    }
                },
            }
        },
        f"{API_PREFIX}/openapi.json": {
            "get": {
                "operationId": "getOpenApi",
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": {"description": "OpenAPI 3.1", "content": _content({"type": "object"})}
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "The process is alive",
                "security": [],
                "tags": ["ops"],
                "responses": {"200": {"description": "alive", "content": _content(_STATUS)}},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Kafka answers (the read side's reachability is reported, not required)",
                "security": [],
                "tags": ["ops"],
                "responses": {
                    "200": {"description": "ready", "content": _content(_READY)},
                    "503": {"description": "not ready", "content": _content(_READY)},
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "security": [],
                "tags": ["ops"],
                "responses": {
                    "200": {
                        "description": "text exposition format",
                        "content": _content({"type": "string"}, "text/plain"),
                    }
                },
            }
        },
        "/dashboard": {
            "get": {
                "operationId": "dashboard",
                "summary": "The live dashboard: a page that reads this API with the token given",
                "security": [],
                "tags": ["ops"],
                "responses": {
                    "200": {
                        "description": "an HTML page",
                        "content": _content({"type": "string"}, "text/html"),
                    }
                },
            }
        },
    }
    for path, media, what in (
        ("/dashboard.js", "text/javascript", "script"),
        ("/dashboard.css", "text/css", "styles"),
    ):
        paths[path] = {
            "get": {
                "operationId": "dashboard" + path.rsplit(".", 1)[1].capitalize(),
                "summary": f"The dashboard's {what}",
                "security": [],
                "tags": ["ops"],
                "responses": {
                    "200": {"description": what, "content": _content({"type": "string"}, media)}
                },
            }
        }
    if sse:
        paths[f"{job}/events"] = {
            "get": {
                "operationId": "streamJobEvents",
                "summary": "The job's chunks and lifecycle events as server-sent events",
                "security": _SECURED,
                "parameters": [_JOB_ID],
                "responses": {
                    "200": {
                        "description": "an event stream until the job is final",
                        "content": _content({"type": "string"}, "text/event-stream"),
                    },
                    **_problems(*_READ_ERRORS, 429),
                },
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "streamjobs",
            "version": __version__,
            "description": "Submit LLM completion jobs, follow them, read their results.",
        },
        "servers": [{"url": "/"}],
        "security": _SECURED,
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a signed streamjobs API token (`make token`)",
                }
            },
        },
    }


_STATUS = {"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]}
_READY = {
    "type": "object",
    "properties": {
        "status": {"type": "string"},
        "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
        "info": {"type": "object", "additionalProperties": {"type": "boolean"}},
    },
    "required": ["status", "checks"],
}
