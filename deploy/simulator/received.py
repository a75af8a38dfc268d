"""The last request bodies the simulator received, so a test can see what a client sent.

Bounded (`SIM_KEEP_REQUESTS`, 0 = keep none): a long run keeps the newest only. Served by
`GET /_sim/requests`; `contains=<text>` keeps the bodies whose JSON text holds it (a
marker put in a prompt finds its job's request), `limit` the newest that many.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    received_at: float
    path: str
    text: str  # the body as sent, decoded: what `contains` searches


class Received:
    """The newest `keep` request bodies, oldest first."""

    def __init__(self, keep: int) -> None:
        self._kept: deque[ReceivedRequest] = deque(maxlen=keep)
        self.keep = keep

    def add(self, path: str, raw: bytes) -> None:
        if self.keep:
            self._kept.append(ReceivedRequest(time.time(), path, raw.decode(errors="replace")))

    def clear(self) -> None:
        self._kept.clear()

    def matching(self, contains: str | None, limit: int | None) -> list[ReceivedRequest]:
        found = [r for r in self._kept if contains is None or contains in r.text]
        return found[-limit:] if limit else found


def _body(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # what arrived, even when it was not JSON


async def serve(request: web.Request, received: Received) -> web.Response:
    """`GET /_sim/requests?contains=&limit=`: the kept bodies, oldest first, as JSON."""
    limit_arg = request.query.get("limit")
    try:
        limit = int(limit_arg) if limit_arg else None
    except ValueError:
        raise web.HTTPBadRequest(text="limit must be an integer") from None
    if limit is not None and limit < 1:
        raise web.HTTPBadRequest(text="limit must be at least 1")
    kept = received.matching(request.query.get("contains"), limit)
    return web.json_response(
        {
            "keep": received.keep,
            "requests": [
                {"received_at": r.received_at, "path": r.path, "body": _body(r.text)} for r in kept
            ],
        }
    )
