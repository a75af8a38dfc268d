"""OpenAI's chat completion stream read from its bytes: SSE `data:` lines parsed with orjson.

No model object per chunk: each event is one `orjson.loads` and a few dict look-ups of
the only fields we use (model, usage, choices[0].delta.content and .tool_calls,
finish_reason). Servers differ (deploy/simulator/dialects.py): events with `choices: []`,
a role-only first delta, no usage, no `[DONE]`, fields of their own; each reads here as
what it says, and what is absent is left for the stream's end to decide.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from services.streamer.toolcalls import Delta, read_deltas

DONE = b"[DONE]"


class MalformedEvent(ValueError):
    """An event that is not a chat completion chunk (bad JSON, wrong shapes)."""


class StreamedError(Exception):
    """The stream carried an `error` object instead of a chunk."""

    def __init__(self, message: str, body: object) -> None:
        super().__init__(message)
        self.body = body


@dataclass(frozen=True, slots=True)
class UpstreamModel:
    """The model the upstream says it streams with, when it differs from the one asked for."""

    model: str


@dataclass(frozen=True, slots=True)
class UpstreamUsage:
    """The usage the upstream reported, as soon as it did (before the stream's end)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int | None = None  # prompt_tokens_details, when the upstream sends it
    reasoning_tokens: int | None = None  # completion_tokens_details, likewise


@dataclass(frozen=True, slots=True)
class ToolCallDeltas:
    """The `delta.tool_calls` of one event, as plain dicts (`toolcalls.Delta`)."""

    deltas: list[Delta]


# What `SSEReader.feed` yields: a content delta, tool-call deltas, a new model name, the usage.
Item = str | ToolCallDeltas | UpstreamModel | UpstreamUsage


class SSEReader:
    """Splits the bytes of one stream into events and yields what each says, in order.

    A model is yielded when it differs from the one before. What the stream's end needs is
    kept: the last `finish_reason`, the last usage, the deltas counted (content and tool
    calls: one token each, what a stream without usage is billed), `[DONE]`.
    """

    __slots__ = ("_data", "_tail", "done", "finish_reason", "model", "tokens", "usage")

    def __init__(self, model: str) -> None:
        self._tail = b""
        self._data: list[bytes] = []  # the `data:` lines of the event being read
        self.model = model
        self.finish_reason: str | None = None
        self.usage: UpstreamUsage | None = None
        self.tokens = 0
        self.done = False  # `[DONE]` was read: nothing after it counts

    def feed(self, chunk: bytes) -> Iterator[Item]:
        """Everything the complete events of `chunk` (and what came before) say."""
        if self.done:
            return
        if self._tail:
            chunk = self._tail + chunk
        lines = chunk.splitlines()
        # A chunk that ends inside a line keeps that line for the next chunk. A CRLF cut
        # between its CR and LF reads as one extra blank line: an empty event, ignored.
        if chunk and chunk[-1] not in b"\r\n":
            self._tail = lines.pop()
        else:
            self._tail = b""
        data = self._data
        for line in lines:
            if not line:
                if data:
                    payload = data[0] if len(data) == 1 else b"\n".join(data)
                    data.clear()
                    if payload.startswith(DONE):
                        self.done = True
                        return
                    yield from self._event(payload)
            elif line.startswith(b"data:"):
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            # Other fields (event, id, retry) and comments say nothing we use.

    def end(self) -> Iterator[Item]:
        """The last event, when the body ended without its blank line."""
        if self._tail:
            yield from self.feed(b"\n\n")
        elif self._data:
            yield from self.feed(b"\n")

    def _event(self, payload: bytes) -> Iterator[Item]:
        text: object = None
        calls: list[Delta] | None = None
        reason: object = None
        try:
            event: Any = orjson.loads(payload)
            error = event.get("error")
            model = event.get("model")
            usage = event.get("usage")
            if usage:
                prompt = int(usage.get("prompt_tokens") or 0)
                completion = int(usage.get("completion_tokens") or 0)
                total = usage.get("total_tokens")
                total = prompt + completion if total is None else int(total)
                # Once per stream, not per token: the details of cached and reasoning tokens.
                cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
                reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
                usage = UpstreamUsage(
                    prompt,
                    completion,
                    total,
                    None if cached is None else int(cached),
                    None if reasoning is None else int(reasoning),
                )
            choices = event.get("choices")
            if choices:
                choice = choices[0]
                delta = choice.get("delta")
                if delta:
                    text = delta.get("content")
                    raw_calls = delta.get("tool_calls")
                    if raw_calls:  # only events that carry tool calls pay for reading them
                        calls = read_deltas(raw_calls)
                reason = choice.get("finish_reason")
        except (AttributeError, TypeError, ValueError, KeyError, IndexError) as exc:
            # orjson.JSONDecodeError is a ValueError; the others are shapes we do not expect.
            raise MalformedEvent(f"not a chat completion chunk: {payload[:80]!r}") from exc
        if error:
            message = error.get("message") if isinstance(error, dict) else None
            if not isinstance(message, str) or not message:
                message = "An error occurred during streaming"
            raise StreamedError(message, error)
        if model and model != self.model and type(model) is str:
            self.model = model
            yield UpstreamModel(model)
        if usage:
            self.usage = usage
            yield usage
        if text:
            if type(text) is not str:
                raise MalformedEvent(f"content is not text: {payload[:80]!r}")
            self.tokens += 1
            yield text
        if calls:
            self.tokens += 1
            yield ToolCallDeltas(calls)
        if reason is not None:
            self.finish_reason = str(reason)
