"""OpenAI's wire format: `chat.completion.chunk` SSE events, completion bodies, error bodies.

A stream's constant parts are encoded once in `ChunkEncoder`, so that sending
tokens is one `bytes.join` over their pre-encoded JSON strings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from deploy.simulator.toolcalls import ToolCallPlan

DONE = b"data: [DONE]\n\n"
SYSTEM_FINGERPRINT = "fp_sim0c0ffee1"

# status -> (message, type, code), as OpenAI answers them
_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    429: (
        "Rate limit reached for requests (simulated). Please try again later.",
        "requests",
        "rate_limit_exceeded",
    ),
    500: (
        "The server had an error while processing your request. Sorry about that! (simulated)",
        "server_error",
        None,
    ),
    503: (
        "The engine is currently overloaded, please try again later. (simulated)",
        "server_error",
        "service_unavailable",
    ),
}


def dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def usage(
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int | None = None,
    reasoning_tokens: int | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    # OpenAI's details, sent only when a directive asks (`[[sim cached=N reasoning=N]]`).
    if cached_tokens is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    if reasoning_tokens is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return out


class ChunkEncoder:
    """The SSE events of one stream; `tokens()` costs one join over pre-encoded token strings."""

    __slots__ = ("_head", "_tail", "_token_head", "_token_sep", "_token_tail")

    def __init__(
        self,
        *,
        completion_id: str,
        created: int,
        model: str,
        include_usage: bool,
        extra: Mapping[str, object] | None = None,
    ):
        head = dumps(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                **(extra or {}),  # a dialect's vendor fields
            }
        )
        self._head = b"data: " + head[:-1] + b',"choices":'
        self._tail = (b',"usage":null' if include_usage else b"") + b"}\n\n"
        self._token_head = self._head + b'[{"index":0,"delta":{"content":'
        self._token_tail = b'},"logprobs":null,"finish_reason":null}]' + self._tail
        self._token_sep = self._token_tail + self._token_head

    def role(self) -> bytes:
        return (
            self._head
            + b'[{"index":0,"delta":{"role":"assistant","content":""},'
            + b'"logprobs":null,"finish_reason":null}]'
            + self._tail
        )

    def tokens(self, encoded: Sequence[bytes]) -> bytes:
        """One event per token; `encoded` are JSON strings such as `b'" fox"'`."""
        return self._token_head + self._token_sep.join(encoded) + self._token_tail

    def tool_calls(self, calls: Sequence[ToolCallPlan]) -> list[bytes]:
        """One event per tool-call delta, as OpenAI streams them: the first names the call
        (index, id, type, function name, empty arguments), the next carry argument pieces."""
        events = []
        for index, call in enumerate(calls):
            first = {
                "index": index,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            pieces = [{"index": index, "function": {"arguments": f}} for f in call.fragments]
            for delta in (first, *pieces):
                events.append(
                    self._head
                    + b'[{"index":0,"delta":{"tool_calls":['
                    + dumps(delta)
                    + b']},"logprobs":null,"finish_reason":null}]'
                    + self._tail
                )
        return events

    def finish(self, reason: str) -> bytes:
        return (
            self._head
            + b'[{"index":0,"delta":{},"logprobs":null,"finish_reason":'
            + dumps(reason)
            + b"}]"
            + self._tail
        )

    def usage(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int | None = None,
        reasoning_tokens: int | None = None,
    ) -> bytes:
        counts = usage(prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens)
        return self._head + b'[],"usage":' + dumps(counts) + b"}\n\n"

    def done(self) -> bytes:
        return DONE


def completion_body(
    *,
    completion_id: str,
    created: int,
    model: str,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    tool_calls: Sequence[ToolCallPlan] = (),
) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if tool_calls:
        message["content"] = text or None
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in tool_calls
        ]
    return dumps(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage(prompt_tokens, completion_tokens),
        }
    )


def error_body(status: int, message: str | None = None, param: str | None = None) -> dict[str, Any]:
    default, kind, code = _ERRORS.get(status, ("Error.", "server_error", None))
    return {"error": {"message": message or default, "type": kind, "param": param, "code": code}}
