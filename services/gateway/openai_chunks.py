"""The notifier's frames of one job as OpenAI `chat.completion.chunk` server-sent events.

Pure logic, no I/O: `ChunkStream.feed` takes one decoded notifier frame and answers the
SSE bytes to send (possibly none) and whether the stream has ended.

Every event carries an `id:` that resumes right after it, and the chunk object the same
value as `event_id` (the SDKs hand out the object, not the SSE id):

- a text or tool-call chunk: `<attempt>:<seq>`, the notifier's own chunk id;
- the closing chunk (`finish_reason`): `<attempt>:<last_seq>:finish`;
- the usage chunk (`choices: []`): `<attempt>:<last_seq>:usage`.

A stream cannot take text back: when the job's attempt restarts after this stream (or
the client resuming it) already had text, the stream ends with an OpenAI error event
(code `attempt_restarted`) naming the job, and the client streams the job again from the
start or reads the final answer. An attempt that continues a cut one (`on_interrupt:
continue`) keeps its chunk numbers, so it goes on in the same stream without a gap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"
FINISH, USAGE = "finish", "usage"
CURSOR_PATTERN = r"^(\d{1,9}):(-1|\d{1,9})(?::(finish|usage))?$"
_CURSOR = re.compile(CURSOR_PATTERN)
_FAILED_STATUS = re.compile(r"^(?:rejected: )?(4\d\d)\b")  # UpstreamRejected's reason


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a client stopped: after chunk `seq` of `attempt`, or after a closing chunk."""

    attempt: int
    seq: int
    stage: str | None = None  # FINISH, USAGE or None (a text chunk)

    @classmethod
    def parse(cls, value: str) -> Cursor:
        """`<attempt>:<seq>[:finish|usage]`; raises ValueError."""
        match = _CURSOR.match(value.strip())
        if match is None:
            raise ValueError(
                f"{value[:80]!r} is not an event id: <attempt>:<seq>, as in each chunk's event_id"
            )
        return cls(int(match.group(1)), int(match.group(2)), match.group(3))

    @property
    def last_event_id(self) -> str:
        """What the notifier resumes after."""
        return f"{self.attempt}:{self.seq}"


def error_object(
    message: str, kind: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """An OpenAI error object, the body of every refusal under `/v1`."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def failed_status(reason: str | None, error_type: str | None = None) -> int:
    """The HTTP status of a failed job: the upstream's own 4xx when it refused the request
    itself, 429 when it kept limiting the rate, else 502 (the upstream failed us)."""
    if error_type == "UpstreamRateLimited":
        return 429
    match = _FAILED_STATUS.match(reason or "")
    if match is not None and error_type in (None, "UpstreamRejected"):
        return 400 if match.group(1) in ("413", "414") else int(match.group(1))
    return 502


def final_error(event: str, job_id: str, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The status and OpenAI error object of a job that failed or was cancelled."""
    reason = str(data.get("reason") or data.get("error") or "")
    if event == "job.cancelled":
        return 409, error_object(
            f"job {job_id} was cancelled: {reason or 'cancelled'}",
            "invalid_request_error",
            "job_cancelled",
        )
    status = failed_status(reason, data.get("error_type"))
    kind = "invalid_request_error" if 400 <= status < 500 and status != 429 else "server_error"
    return status, error_object(
        f"job {job_id} failed: {reason or 'no reason given'}", kind, "job_failed"
    )


def usage_object(usage: dict[str, Any] | None) -> dict[str, Any]:
    """Our `TokenUsage` as OpenAI's `usage`, with the details that are known."""
    usage = usage or {}
    out: dict[str, Any] = {
        "prompt_tokens": int(usage.get("prompt_tokens") or 0),
        "completion_tokens": int(usage.get("completion_tokens") or 0),
        "total_tokens": int(usage.get("total_tokens") or 0),
    }
    if usage.get("cached_tokens") is not None:
        out["prompt_tokens_details"] = {"cached_tokens": usage["cached_tokens"]}
    if usage.get("reasoning_tokens") is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": usage["reasoning_tokens"]}
    return out


def completion(job_id: str, created: int, model: str, result: dict[str, Any]) -> dict[str, Any]:
    """A stored `JobResult` (completed) as an OpenAI `chat.completion`."""
    tool_calls = result.get("tool_calls") or None
    text = result.get("response")
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if tool_calls and not text else (text or ""),
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": job_id,
        "object": "chat.completion",
        "created": created,
        "model": result.get("model") or model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": result.get("finish_reason")
                or ("tool_calls" if tool_calls else "stop"),
                "logprobs": None,
            }
        ],
        "usage": usage_object(result.get("usage")),
    }


def sse(payload: dict[str, Any], event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n".encode() if event_id is not None else b""
    return head + b"data: " + orjson.dumps(payload) + b"\n\n"


class ChunkStream:
    """One client's OpenAI stream of a job, from the notifier's frames of it."""

    def __init__(
        self,
        job_id: str,
        model: str,
        created: int,
        *,
        include_usage: bool = False,
        after: Cursor | None = None,
    ) -> None:
        self.job_id = job_id
        self.model = model
        self.created = created
        self.include_usage = include_usage
        self.after = after
        # Where the client is: the attempt and seq it has, and whether it has any text.
        self.attempt = after.attempt if after is not None else None
        self.seq = after.seq if after is not None else -1
        self.has_text = after is not None and after.seq >= 0
        self.role_sent = after is not None
        self.ended = False
        self.stale = False  # the notifier no longer holds this ended job: `from_result`

    @property
    def last_event_id(self) -> str | None:
        """The notifier's resume point of this stream: None from the start."""
        if self.attempt is None:
            return None
        return f"{self.attempt}:{self.seq}"

    def _chunk(self, delta: dict[str, Any], finish: str | None, event_id: str) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.job_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            "event_id": event_id,
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def error(self, message: str, kind: str, code: str) -> bytes:
        """An error event, which ends the stream (the SDK raises it as an APIError)."""
        self.ended = True
        return sse(error_object(message, kind, code))

    def restarted(self, attempt: int) -> bytes:
        return self.error(
            f"job {self.job_id} restarted as attempt {attempt} after its text was streamed:"
            f" stream it again from the start (GET /v1/chat/completions/{self.job_id}"
            "?stream=true) or read its answer once done (GET /v1/chat/completions/"
            f"{self.job_id})",
            "server_error",
            "attempt_restarted",
        )

    def feed(self, frame: dict[str, Any]) -> bytes:
        """The SSE bytes owed for one notifier frame (b"" for none); sets `ended`."""
        if self.ended:
            return b""
        kind = frame.get("type")
        if kind == "chunk":
            return self._on_chunk(frame)
        if kind == "event":
            return self._on_event(str(frame.get("event")), dict(frame.get("data") or {}))
        if kind == "subscribed" and frame.get("restarted") and self.has_text:
            return self.restarted(int(frame.get("attempt") or 0))
        if kind == "resync" and frame.get("reason") == "history unavailable":
            if frame.get("status") in ("completed", "failed", "cancelled") and not self.has_text:
                self.stale = True  # the final event is not held either: read the result
                return b""
            return self.error(
                f"the live stream of job {self.job_id} is no longer held: read its text so"
                f" far at GET /api/v1/jobs/{self.job_id}/stream, or its answer at"
                f" GET /v1/chat/completions/{self.job_id}",
                "server_error",
                "stream_unavailable",
            )
        if kind == "error":
            return self.error(
                f"job {self.job_id}: {frame.get('message') or frame.get('code')}",
                "server_error",
                str(frame.get("code") or "stream_error"),
            )
        return b""

    def _on_chunk(self, frame: dict[str, Any]) -> bytes:
        attempt, seq = int(frame["attempt"]), int(frame["seq"])
        if self.attempt is not None and attempt != self.attempt:
            if self.has_text:
                return self.restarted(attempt)
            self.seq = -1  # nothing shown yet: the new attempt simply takes over
        elif seq <= self.seq:
            return b""  # already sent (a resume that overlapped)
        self.attempt, self.seq = attempt, seq
        delta: dict[str, Any] = {}
        if not self.role_sent:
            delta["role"] = "assistant"
            self.role_sent = True
        text = str(frame.get("text") or "")
        calls = frame.get("tool_calls")
        delta["content"] = None if calls and not text else text
        if calls:
            delta["tool_calls"] = calls
        self.has_text = self.has_text or bool(text) or bool(calls)
        event_id = f"{attempt}:{seq}"
        return sse(self._chunk(delta, None, event_id), event_id)

    def _on_event(self, event: str, data: dict[str, Any]) -> bytes:
        if event == "job.completed":
            return self._completed(data)
        if event in ("job.failed", "job.cancelled"):
            _, body = final_error(event, self.job_id, data)
            self.ended = True
            return sse(body)
        return b""

    def _completed(self, data: dict[str, Any]) -> bytes:
        self.ended = True
        attempt = self.attempt if self.attempt is not None else int(data.get("attempt") or 0)
        last = int(data.get("last_seq", self.seq))
        base = f"{attempt}:{last}"
        stage = self.after.stage if self.after is not None else None
        out = b""
        if stage is None:
            delta: dict[str, Any] = {} if self.role_sent else {"role": "assistant", "content": ""}
            self.role_sent = True
            finish = data.get("finish_reason") or (
                "tool_calls" if data.get("tool_calls") else "stop"
            )
            out += sse(self._chunk(delta, str(finish), f"{base}:{FINISH}"), f"{base}:{FINISH}")
        if self.include_usage and stage != USAGE:
            chunk = self._chunk({}, None, f"{base}:{USAGE}")
            chunk["choices"] = []
            chunk["usage"] = usage_object(data.get("usage"))
            out += sse(chunk, f"{base}:{USAGE}")
        return out + DONE

    def from_result(self, result: dict[str, Any]) -> bytes:
        """A stored `JobResult` streamed whole: one chunk of its text and tool calls, then
        its end, as the notifier's frames would have given them."""
        status = str(result.get("status"))
        if status != "completed":
            event = "job.cancelled" if status == "cancelled" else "job.failed"
            return self.feed(
                {"type": "event", "event": event, "data": {"reason": result.get("error")}}
            )
        attempt = int(result.get("attempt") or 0)
        last = max(int(result.get("chunks") or 1) - 1, 0)
        calls = [{"index": i, **call} for i, call in enumerate(result.get("tool_calls") or ())]
        frame: dict[str, Any] = {
            "type": "chunk",
            "attempt": attempt,
            "seq": last,
            "text": result.get("response") or "",
        }
        if calls:
            frame["tool_calls"] = calls
        data = {
            "finish_reason": result.get("finish_reason"),
            "tool_calls": result.get("tool_calls"),
            "usage": result.get("usage"),
            "last_seq": last,
            "attempt": attempt,
        }
        return self.feed(frame) + self.feed(
            {"type": "event", "event": "job.completed", "data": data}
        )
