"""The OpenAPI 3.1 document of the public REST API, derived from the route table.

Each route's declaration (routes.py) gives its operation; the schemas are the same pydantic
models the gateway validates with and the results service answers with, and the query
parameters come from the query models of shared/queries.py.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from shared import __version__
from shared.api import JobSubmission
from shared.http import Reply, Route

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


def _inline(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """A query field's schema as a parameter's: refs inlined, the null of an option dropped."""
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        schema = {**(options[0] if len(options) == 1 else {"anyOf": options}), **rest}
    if "$ref" in schema:
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**defs[schema["$ref"].rsplit("/", 1)[1]], **rest}
    return {k: v for k, v in schema.items() if k not in ("title", "description", "default")}


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The OpenAPI parameters of a query model, one per field, in its order."""
    schema = model.model_json_schema(mode="validation")
    defs = schema.get("$defs", {})
    return [
        {
            "name": name,
            "in": "query",
            "required": False,
            "schema": _inline(prop, defs),
            "description": prop.get("description", ""),
        }
        for name, prop in schema["properties"].items()
    ]


def _path_parameters(path: str) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for name in re.findall(r"{(\w+)}", path)
    ]


_SECURED: list[dict[str, list[str]]] = [{"bearerAuth": []}]


def _operation(route: Route[Any], ref: Any) -> dict[str, Any]:
    def reply(r: Reply) -> dict[str, Any]:
        out: dict[str, Any] = {"description": r.description}
        if r.model is not None:
            one = ref(r.model, "serialization")
            out["content"] = _content({"type": "array", "items": one} if r.many else one)
        elif r.media != "application/json" or r.schema is not None:
            out["content"] = _content(dict(r.schema or {"type": "string"}), r.media)
        return out

    op: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "security": _SECURED if route.secured else [],
    }
    if route.tags:
        op["tags"] = list(route.tags)
    parameters = [
        *route.headers,
        *_path_parameters(route.path),
        *(query_parameters(route.query) if route.query is not None else []),
    ]
    if parameters:
        op["parameters"] = parameters
    if route.body is not None:
        op["requestBody"] = {"required": True, "content": _content(ref(route.body, "validation"))}
    op["responses"] = {
        **{str(r.status): reply(r) for r in route.replies},
        **_problems(*route.problems),
    }
    return op


def build_document(
    routes: Iterable[Route[Any]],
    *,
    max_prompt_chars: int | None = None,
    max_json_depth: int = 32,
    job_types: Collection[str] = (),
) -> dict[str, Any]:
    routes = list(routes)
    models: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}
    for route in routes:
        if route.body is not None:
            models[(route.body, "validation")] = None
        for r in route.replies:
            if r.model is not None:
                models[(r.model, "serialization")] = None
    models[(Problem, "serialization")] = None
    refs, top = models_json_schema(list(models), ref_template=REF)
    schemas: dict[str, Any] = dict(top.get("$defs", {}))

    def ref(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return dict(refs[(model, mode)])

    if (JobSubmission, "validation") in models:
        _tighten_submission(
            schemas, ref(JobSubmission, "validation"), max_prompt_chars, max_json_depth, job_types
        )
    paths: dict[str, Any] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, ref)
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


def _tighten_submission(
    schemas: dict[str, Any],
    submission_ref: dict[str, Any],
    max_prompt_chars: int | None,
    max_json_depth: int,
    job_types: Collection[str],
) -> None:
    """What the gateway checks beyond the model: the known job types, the prompt's bound."""
    submission = schemas[submission_ref["$ref"].rsplit("/", 1)[1]]
    if job_types:  # the workload file's, known once the gateway loaded it
        submission["properties"]["job_type"]["enum"] = sorted(job_types)
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
