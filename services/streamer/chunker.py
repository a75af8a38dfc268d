"""Token coalescing: the first token leaves alone at once, later ones by time window or count.

A token is a content delta or an event's tool-call deltas; a chunk carries the text of
its content tokens and the merged tool-call deltas of the others (either may be empty).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.streamer.toolcalls import Delta, merge


@dataclass(frozen=True, slots=True)
class Chunk:
    seq: int
    text: str
    tokens: int
    first_token_at: float  # wall-clock seconds of the chunk's first token
    emitted_at: float
    tool_calls: list[Delta] | None = None  # merged tool-call deltas, in stream order


class Chunker:
    """Collects token deltas of one attempt and cuts them into numbered chunks (seq 0, 1, ...)."""

    __slots__ = (
        "_calls",
        "_first_at",
        "_parts",
        "_start",
        "_window_s",
        "calls",
        "max_tokens",
        "next_seq",
        "texts",
        "tokens",
    )

    def __init__(
        self, *, window_ms: float = 30.0, max_tokens: int = 16, start_seq: int = 0
    ) -> None:
        self._window_s = window_ms / 1000.0
        self.max_tokens = max(1, max_tokens)
        self._parts: list[str] = []  # a tool-call event adds an empty part: one token
        self._calls: list[Delta] = []  # tool-call deltas pending
        self._first_at = 0.0
        # A continuing attempt numbers on from the stream it carries on.
        self._start = start_seq
        self.next_seq = start_seq
        self.texts: list[str] = []  # every flushed chunk's text, for the final response
        self.calls: list[Delta] = []  # every flushed chunk's tool-call deltas, for the result
        self.tokens = 0  # tokens of every flushed chunk: what a cut-short attempt streamed

    @property
    def pending(self) -> int:
        return len(self._parts)

    @property
    def last_seq(self) -> int:
        return self.next_seq - 1

    def deadline(self) -> float | None:
        """Wall-clock time by which the pending tokens must leave, or None if none pend."""
        return self._first_at + self._window_s if self._parts else None

    def add(self, text: str, now: float) -> Chunk | None:
        """Add one token; returns a chunk when one is due."""
        if not self._parts:
            self._first_at = now
        self._parts.append(text)
        if (
            self.next_seq == self._start
            or len(self._parts) >= self.max_tokens
            or now - self._first_at >= self._window_s
        ):
            return self.flush(now)
        return None

    def add_tool_calls(self, deltas: list[Delta], now: float) -> Chunk | None:
        """Add one event's tool-call deltas (one token); returns a chunk when one is due."""
        self._calls.extend(deltas)
        return self.add("", now)  # a token with no text: the same window and count

    def due(self, now: float) -> Chunk | None:
        """The pending tokens, if their window has passed."""
        if self._parts and now - self._first_at >= self._window_s:
            return self.flush(now)
        return None

    def flush(self, now: float) -> Chunk | None:
        """Whatever pends, as a chunk (stream end, cancel)."""
        if not self._parts:
            return None
        text = "".join(self._parts)
        calls = None
        if self._calls:
            calls = merge(self._calls)
            self.calls.extend(calls)
            self._calls = []
        chunk = Chunk(self.next_seq, text, len(self._parts), self._first_at, now, calls)
        self._parts = []
        self.next_seq += 1
        self.tokens += chunk.tokens  # per chunk, not per token
        self.texts.append(text)
        return chunk

    def response(self) -> str:
        return "".join(self.texts)
