"""Server frames, encoded once: the same object is queued for every subscriber.

A `Frame` holds the message text and builds its WebSocket frame and its SSE form
at most once each, on first use, so one chunk costs one JSON encoding and one
WebSocket framing whatever the audience.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from shared.contracts import LifecycleEvent, TokenChunk
from shared.lifecycle import EVENT_STATUS

FINAL_EVENTS = frozenset(kind for kind, status in EVENT_STATUS.items() if status.is_final)

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class Frame:
    """One encoded server message; `sse_id` is `attempt:seq` for chunks and events.

    A reconnecting SSE client sends that id back (`resume.parse_last_event_id`).
    """

    __slots__ = ("_sse", "_ws", "event", "sse_id", "text")

    def __init__(self, text: str, event: str, sse_id: str | None = None) -> None:
        self.text = text
        self.event = event
        self.sse_id = sse_id
        self._sse: bytes | None = None
        self._ws: bytes | None = None

    @property
    def ws(self) -> bytes:
        """The whole WebSocket text frame (RFC 6455 §5.2), the same bytes for every client.

        A server's frames are not masked, and the notifier negotiates no extension
        (`compression=None`), so one framing serves every connection.
        """
        if self._ws is None:
            # A lone surrogate cannot travel as UTF-8: it is replaced, not a failed fan-out.
            payload = self.text.encode("utf-8", "replace")
            size = len(payload)
            if size < 126:
                head = bytes((0x81, size))
            elif size < 65_536:
                head = struct.pack("!BBH", 0x81, 126, size)
            else:
                head = struct.pack("!BBQ", 0x81, 127, size)
            self._ws = head + payload
        return self._ws

    @property
    def sse(self) -> bytes:
        if self._sse is None:
            head = f"id: {self.sse_id}\n" if self.sse_id is not None else ""
            self._sse = f"{head}event: {self.event}\ndata: {self.text}\n\n".encode()
        return self._sse

    @property
    def final(self) -> bool:
        return self.event in FINAL_EVENTS

    def __repr__(self) -> str:
        return f"Frame({self.text!r})"


def control(kind: str, **fields: Any) -> Frame:
    """A frame that is not part of a job's stream: subscribed, error, resync, pong…"""
    return Frame(_dumps({"type": kind, **fields}), kind)


def error_frame(code: str, message: str, **fields: object) -> Frame:
    return control("error", code=code, message=message, **fields)


def chunk_frame(record: TokenChunk) -> Frame:
    d = record.data
    message: dict[str, Any] = {
        "type": "chunk",
        "job_id": record.job_id,
        "attempt": d.attempt,
        "seq": d.seq,
        "text": d.text,
        "tokens": d.tokens,
        "emitted_at": d.emitted_at.isoformat(),
    }
    if d.tool_calls:
        # OpenAI's `delta.tool_calls` shape, absent keys left out as OpenAI leaves them.
        message["tool_calls"] = [c.model_dump(exclude_none=True) for c in d.tool_calls]
    return Frame(_dumps(message), "chunk", f"{d.attempt}:{d.seq}")


def event_frame(record: LifecycleEvent, attempt: int, last_seq: int) -> Frame:
    text = _dumps(
        {
            "type": "event",
            "event": record.type,
            "job_id": record.job_id,
            "event_id": str(record.event_id),
            "occurred_at": record.occurred_at.isoformat(),
            "data": record.data.model_dump(mode="json"),
        }
    )
    return Frame(text, record.type, f"{attempt}:{last_seq}")
