"""Refusals under `/v1` as OpenAI error objects, with the statuses the OpenAI SDKs map to
their own exception types; `/api/v1` keeps its problem JSON.

Every refusal the gateway makes is first a problem (the same checks, the same limits);
this middleware rewrites the answer of a `/v1/...` request: `{"error": {"message", "type",
"param", "code"}}`, the problem's `type` as `code` (`rate-limit-jobs-in-flight` →
`rate_limit_jobs_in_flight`), the field its `errors` name as `param`, `Retry-After` kept.
OpenAI answers an invalid request with 400, an unknown model with 404: so do we here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from services.gateway.openai_chunks import error_object
from shared.http import PROBLEM_CONTENT_TYPE

OPENAI_PREFIX = "/v1/"
_KEPT_HEADERS = ("Retry-After", "WWW-Authenticate", "Allow", "X-Streamjobs-Job-Id")
# Problem statuses OpenAI itself answers otherwise.
_STATUS = {413: 400, 414: 400, 422: 400}
_CODES = {"unknown-model": "model_not_found", "unauthorized": "invalid_api_key"}
_BY_KIND_STATUS = {"unknown-model": 404}


def error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 404:
        return "not_found_error"
    if status == 409:
        return "conflict_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def param_of(errors: Any) -> str | None:
    """The request field an error names, as OpenAI spells it: `temperature`,
    `messages[0].content` (our `config.` level is the request's top level here)."""
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return None
    loc = [part for part in errors[0].get("loc") or () if part not in ("body", "config")]
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or None


def from_problem(problem: dict[str, Any], status: int) -> tuple[int, dict[str, Any]]:
    """The OpenAI status and error object of one problem."""
    kind = str(problem.get("type") or "").rsplit("/", 1)[-1]
    status = _BY_KIND_STATUS.get(kind, _STATUS.get(status, status))
    message = str(problem.get("detail") or problem.get("title") or "refused")
    code = _CODES.get(kind, kind.replace("-", "_") or None)
    return status, error_object(message, error_type(status), code, param_of(problem.get("errors")))


def openai_json(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


@web.middleware
async def openai_errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    response = await handler(request)
    if (
        not request.path.startswith(OPENAI_PREFIX)
        or not isinstance(response, web.Response)
        or response.content_type != PROBLEM_CONTENT_TYPE
        or not isinstance(response.body, bytes)
    ):
        return response
    try:
        problem = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        problem = {}
    status, body = from_problem(problem if isinstance(problem, dict) else {}, response.status)
    headers = {name: response.headers[name] for name in _KEPT_HEADERS if name in response.headers}
    return openai_json(status, body, headers)
