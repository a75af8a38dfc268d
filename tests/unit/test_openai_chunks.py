"""The notifier's frames of a job as OpenAI chunk events, and refusals as OpenAI errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.gateway.openai_chunks import ChunkStream, Cursor, completion, failed_status
from services.gateway.openai_errors import from_problem, param_of


def chunk(seq: int, text: str = "", attempt: int = 1, **extra: Any) -> dict[str, Any]:
    return {"type": "chunk", "attempt": attempt, "seq": seq, "text": text, "tokens": 1, **extra}


def completed(last_seq: int, **data: Any) -> dict[str, Any]:
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8, "cached_tokens": 2}
    return {
        "type": "event",
        "event": "job.completed",
        "data": {"attempt": 1, "last_seq": last_seq, "usage": usage, **data},
    }


def events(raw: bytes) -> list[tuple[str | None, Any]]:
    """(id, data) of each SSE event; data decoded unless it is [DONE]."""
    out: list[tuple[str | None, Any]] = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        data = fields["data"]
        out.append((fields.get("id"), data if data == "[DONE]" else json.loads(data)))
    return out


def run(stream: ChunkStream, *frames: dict[str, Any]) -> list[tuple[str | None, Any]]:
    return events(b"".join(stream.feed(f) for f in frames))


def test_chunks_become_completion_chunks_with_resumable_ids_then_finish_usage_and_done() -> None:
    stream = ChunkStream("job-1", "gpt-4o-mini", 1700, include_usage=True)
    out = run(
        stream,
        {"type": "subscribed", "attempt": 1, "restarted": False},
        chunk(0, "Hel"),
        chunk(1, "lo"),
        completed(1, finish_reason="length"),
    )
    assert [i for i, _ in out] == ["1:0", "1:1", "1:1:finish", "1:1:usage", None]
    first, second, finish, usage, done = (d for _, d in out)
    assert first["object"] == "chat.completion.chunk" and first["id"] == "job-1"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "Hel"}
    assert second["choices"][0]["delta"] == {"content": "lo"}
    assert first["event_id"] == "1:0" and first["usage"] is None
    assert finish["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == []
    assert usage["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 3,
        "total_tokens": 8,
        "prompt_tokens_details": {"cached_tokens": 2},
    }
    assert done == "[DONE]" and stream.ended
    assert stream.feed(chunk(2, "late")) == b""


def test_tool_call_deltas_pass_as_openai_delta_tool_calls() -> None:
    call = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "f", "arguments": ""},
    }
    stream = ChunkStream("j", "m", 1)
    out = run(stream, chunk(0, tool_calls=[call]), completed(0, tool_calls=[call]))
    delta = out[0][1]["choices"][0]["delta"]
    assert delta == {"role": "assistant", "content": None, "tool_calls": [call]}
    assert out[1][1]["choices"][0]["finish_reason"] == "tool_calls"
    assert "usage" not in out[1][1]  # only asked for with include_usage


def test_a_resume_skips_what_the_client_has_and_the_closing_chunks_it_saw() -> None:
    stream = ChunkStream("j", "m", 1, after=Cursor.parse("1:1"))
    assert stream.last_event_id == "1:1"
    out = run(stream, chunk(1, "dup"), chunk(2, "new"), completed(2))
    assert [i for i, _ in out] == ["1:2", "1:2:finish", None]
    assert out[0][1]["choices"][0]["delta"] == {"content": "new"}, "no role again mid-stream"

    after_finish = ChunkStream("j", "m", 1, include_usage=True, after=Cursor.parse("1:2:finish"))
    assert [i for i, _ in run(after_finish, completed(2))] == ["1:2:usage", None]
    after_usage = ChunkStream("j", "m", 1, include_usage=True, after=Cursor.parse("1:2:usage"))
    assert run(after_usage, completed(2)) == [(None, "[DONE]")]


def test_a_restart_after_text_ends_the_stream_with_an_error_naming_the_job() -> None:
    stream = ChunkStream("job-9", "m", 1)
    out = run(stream, chunk(0, "cut "), chunk(0, "again", attempt=2))
    error = out[-1][1]["error"]
    assert error["code"] == "attempt_restarted" and "job-9" in error["message"]
    assert stream.ended

    # A client resuming into a restarted attempt learns it the same way.
    resumed = ChunkStream("job-9", "m", 1, after=Cursor.parse("1:4"))
    out = run(resumed, {"type": "subscribed", "attempt": 2, "restarted": True})
    assert out[0][1]["error"]["code"] == "attempt_restarted"


def test_a_new_attempt_before_any_text_simply_takes_over() -> None:
    stream = ChunkStream("j", "m", 1)
    out = run(stream, chunk(0, "", attempt=1), chunk(0, "fresh", attempt=2), completed(0))
    assert [d["choices"][0]["delta"].get("content") for _, d in out[:2]] == ["", "fresh"]
    assert out[-1] == (None, "[DONE]")


def test_failed_and_cancelled_jobs_end_in_error_events() -> None:
    failed = ChunkStream("j", "m", 1)
    out = run(
        failed,
        {
            "type": "event",
            "event": "job.failed",
            "data": {"reason": "rejected: 400: bad", "error_type": "UpstreamRejected"},
        },
    )
    assert out[0][1]["error"]["code"] == "job_failed" and failed.ended
    cancelled = run(
        ChunkStream("j", "m", 1), {"type": "event", "event": "job.cancelled", "data": {}}
    )
    assert cancelled[0][1]["error"]["code"] == "job_cancelled"


def test_a_job_the_notifier_no_longer_holds_streams_from_its_stored_result() -> None:
    stream = ChunkStream("j", "m", 1, include_usage=True)
    resync = {"type": "resync", "reason": "history unavailable", "status": "completed"}
    assert stream.feed(resync) == b"" and stream.stale
    result = {
        "status": "completed",
        "attempt": 1,
        "chunks": 4,
        "response": "all of it",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    out = events(stream.from_result(result))
    assert out[0][1]["choices"][0]["delta"]["content"] == "all of it"
    assert [i for i, _ in out] == ["1:3", "1:3:finish", "1:3:usage", None]


@pytest.mark.parametrize(
    ("reason", "error_type", "status"),
    [
        ("rejected: 400: Error code: 400 - bad", "UpstreamRejected", 400),
        ("rejected: 404: no such model", None, 404),
        ("rejected: 413: too long", "UpstreamRejected", 400),
        ("server_error: 500: boom", "UpstreamServerError", 502),
        ("rate limited", "UpstreamRateLimited", 429),
        (None, None, 502),
    ],
)
def test_a_failed_job_answers_the_upstream_refusal_or_502(
    reason: str | None, error_type: str | None, status: int
) -> None:
    assert failed_status(reason, error_type) == status


def test_a_stored_result_is_a_chat_completion() -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    body = completion(
        "j",
        5,
        "asked",
        {
            "model": "gpt-4o-mini-2024",
            "response": "",
            "tool_calls": calls,
            "finish_reason": "tool_calls",
            "usage": {
                "prompt_tokens": 1,
                "completion_tokens": 2,
                "total_tokens": 3,
                "reasoning_tokens": 1,
            },
        },
    )
    assert body["model"] == "gpt-4o-mini-2024" and body["object"] == "chat.completion"
    message = body["choices"][0]["message"]
    assert message["content"] is None and message["tool_calls"] == calls
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 1}


@pytest.mark.parametrize("value", ["", "1", "a:b", "1:2:done", "-1:0", "1:2:finish:x"])
def test_a_bad_cursor_is_refused(value: str) -> None:
    with pytest.raises(ValueError):
        Cursor.parse(value)


def test_problems_become_openai_errors_with_the_sdk_statuses() -> None:
    base = "https://streamjobs.dev/problems/"
    status, body = from_problem(
        {
            "type": base + "invalid-submission",
            "detail": "the body does not validate",
            "errors": [{"loc": ["body", "config", "temperature"], "msg": "x", "type": "y"}],
        },
        422,
    )
    assert status == 400
    assert body["error"] == {
        "message": "the body does not validate",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": "invalid_submission",
    }
    assert from_problem({"type": base + "unknown-model"}, 422)[0] == 404
    assert (
        from_problem({"type": base + "unknown-model"}, 422)[1]["error"]["code"] == "model_not_found"
    )
    status, body = from_problem({"type": base + "unauthorized", "title": "Unauthorized"}, 401)
    assert (status, body["error"]["code"], body["error"]["message"]) == (
        401,
        "invalid_api_key",
        "Unauthorized",
    )
    status, body = from_problem({"type": base + "rate-limit-jobs-in-flight"}, 429)
    assert (status, body["error"]["type"]) == (429, "rate_limit_error")
    assert param_of([{"loc": ["body", "messages", 0, "content"]}]) == "messages[0].content"
    assert param_of([]) is None
