"""A refused request as a value, as the use cases return it, and its one rendering as
problem JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from shared.http import problem


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a request is refused: the problem JSON to answer and the reason for metrics."""

    status: int
    kind: str
    title: str
    detail: str
    errors: list[dict[str, Any]] = field(default_factory=list)
    headers: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def response(self) -> web.Response:
        extra: dict[str, Any] = {"errors": self.errors} if self.errors else {}
        return problem(
            self.status,
            self.kind,
            self.title,
            self.detail,
            headers=self.headers,
            **extra,
            **self.extra,
        )


def retry_later(kind: str, title: str, detail: str, retry_after_s: int | str) -> Rejection:
    """A 503 of a dependency or bound, with the seconds to wait."""
    return Rejection(503, kind, title, detail, headers={"Retry-After": str(retry_after_s)})


RESULTS_UNAVAILABLE = retry_later(
    "results-unavailable",
    "Read side unavailable",
    "the results service did not answer; submitting still works",
    1,
)
