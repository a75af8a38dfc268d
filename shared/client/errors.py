"""What the client raises: a problem JSON answer mapped to a type named for what happened.

Every answer the API refuses is RFC 9457 problem JSON (`shared.http.problem`); its status
picks the class, its `type`, `title` and `detail` travel with the exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.http import PROBLEM_BASE


class StreamjobsError(Exception):
    """Anything the client could not do; `retriable` says whether trying again may help."""

    retriable = False


class CannotConnect(StreamjobsError):
    """The gateway (or the notifier) could not be reached, or did not answer in time."""

    retriable = True


class ApiError(StreamjobsError):
    """The API answered with an error: its HTTP status and problem JSON."""

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        self.status = status
        self.problem = dict(problem)
        kind = str(problem.get("type", ""))
        self.kind = kind.removeprefix(PROBLEM_BASE) if kind else f"http-{status}"
        self.title = str(problem.get("title") or f"HTTP {status}")
        self.detail = str(problem.get("detail") or "")
        super().__init__(f"{self.title} ({status}): {self.detail}" if self.detail else self.title)


class ValidationFailed(ApiError):
    """The request was refused as invalid (400, 413, 414, 422); `errors` says where."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        errors = self.problem.get("errors")
        return list(errors) if isinstance(errors, list) else []


class Unauthorized(ApiError):
    """401: no token, or a malformed, forged, expired or revoked one."""


class Forbidden(ApiError):
    """403: the token lacks a scope the request needs."""


class NotFound(ApiError):
    """404: no such job, or not yours (the API never says which)."""


class Conflict(ApiError):
    """409: e.g. a result asked for before the job ended, an Idempotency-Key reused."""


class _WaitAndRetry(ApiError):
    retriable = True

    def __init__(self, status: int, problem: Mapping[str, Any], retry_after: float | None) -> None:
        super().__init__(status, problem)
        self.retry_after = retry_after  # seconds, from the Retry-After header


class RateLimited(_WaitAndRetry):
    """429: a per-user limit; `retry_after` is the seconds to wait."""


class Unavailable(_WaitAndRetry):
    """503: a dependency or bound of the service; `retry_after` is the seconds to wait."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: ValidationFailed,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: ValidationFailed,
    414: ValidationFailed,
    422: ValidationFailed,
}


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None  # an HTTP date: rare enough here to be read as "unknown"


def from_answer(status: int, body: Any, headers: Mapping[str, str]) -> ApiError:
    """The exception for an error answer; `body` is its parsed JSON (anything else: {})."""
    problem: Mapping[str, Any] = body if isinstance(body, Mapping) else {}
    if status in (429, 503):
        kind = RateLimited if status == 429 else Unavailable
        return kind(status, problem, _seconds(headers.get("Retry-After")))
    return _BY_STATUS.get(status, ApiError)(status, problem)
