"""The chat completion stream read from its bytes: events, [DONE], errors, any split."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.streamer.sse import (
    MalformedEvent,
    SSEReader,
    StreamedError,
    UpstreamModel,
    UpstreamUsage,
)

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def event(obj: object, *, newline: bytes = b"\n") -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + newline + newline


def token(text: str) -> dict[str, object]:
    choice = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
    return {**HEAD, "choices": [choice], "usage": None}


def finish(reason: str = "stop") -> dict[str, object]:
    choice = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}
    return {**HEAD, "choices": [choice], "usage": None}


def usage(prompt: int, completion: int) -> dict[str, object]:
    counts = {"prompt_tokens": prompt, "completion_tokens": completion}
    return {**HEAD, "choices": [], "usage": {**counts, "total_tokens": prompt + completion}}


def stream_of(texts: list[str], *, newline: bytes = b"\n") -> bytes:
    role = {**HEAD, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    events = [role, *(token(t) for t in texts), finish(), usage(7, len(texts))]
    return b"".join(event(e, newline=newline) for e in events) + b"data: [DONE]" + newline * 2


def read_all(reader: SSEReader, pieces: list[bytes]) -> list[object]:
    out: list[object] = []
    for piece in pieces:
        out.extend(reader.feed(piece))
    out.extend(reader.end())
    return out


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts})
    return [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]


texts = st.lists(st.text(min_size=1, max_size=6), max_size=30)


@settings(max_examples=300, deadline=None)
@given(texts=texts, cuts=st.lists(st.integers(0, 10_000), max_size=12), crlf=st.booleans())
def test_every_token_is_read_in_order_however_the_bytes_are_split(
    texts: list[str], cuts: list[int], crlf: bool
) -> None:
    body = stream_of(texts, newline=b"\r\n" if crlf else b"\n")
    reader = SSEReader("m")
    out = read_all(reader, split(body, cuts))
    assert [o for o in out if isinstance(o, str)] == texts
    assert [o for o in out if isinstance(o, UpstreamUsage)] == [
        UpstreamUsage(7, len(texts), 7 + len(texts))
    ]
    assert reader.done and reader.finish_reason == "stop"
    assert reader.tokens == len(texts)


def test_nothing_after_done_is_read() -> None:
    reader = SSEReader("m")
    out = read_all(reader, [event(token("a")) + b"data: [DONE]\n\n" + event(token("late"))])
    assert out == ["a"]
    assert reader.done


def test_a_new_model_name_is_reported_once() -> None:
    reader = SSEReader("gpt-4o-mini")
    other = {**token("a"), "model": "gpt-4o-mini-2024-07-18"}
    out = read_all(reader, [event(other), event({**token("b"), "model": other["model"]})])
    assert out == [UpstreamModel("gpt-4o-mini-2024-07-18"), "a", "b"]
    assert reader.model == "gpt-4o-mini-2024-07-18"


def test_comments_other_fields_and_multi_line_data_are_read_as_sse_says() -> None:
    payload = json.dumps(token("x"), indent=1).encode().split(b"\n")
    body = b": keep-alive\n\nevent: chunk\nid: 1\n" + b"".join(
        b"data:" + p + b"\n" for p in payload
    )
    assert read_all(SSEReader("m"), [body + b"\n"]) == ["x"]


def test_an_event_cut_off_at_the_end_of_the_body_is_still_read() -> None:
    reader = SSEReader("m")
    assert read_all(reader, [event(token("a")) + b"data: " + json.dumps(finish()).encode()]) == [
        "a"
    ]
    assert reader.finish_reason == "stop" and not reader.done


def test_an_error_object_in_the_stream_raises_with_its_message() -> None:
    reader = SSEReader("m")
    body = event(token("a")) + event({"error": {"message": "overloaded", "type": "server_error"}})
    with pytest.raises(StreamedError, match="overloaded") as caught:
        read_all(reader, [body])
    assert caught.value.body == {"message": "overloaded", "type": "server_error"}


@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        b"[1, 2]",
        b'"text"',
        b'{"choices": {"0": 1}}',
        b'{"choices": [{"delta": {"content": 42}}]}',
        b'{"choices": [{"delta": "x"}]}',
        b'{"usage": {"prompt_tokens": "many"}}',
        b'{"choices": [{"delta": {"content": "\\ud800"}}]}',  # a lone surrogate
        b"NaN",
    ],
)
def test_an_event_that_is_not_a_chat_completion_chunk_is_malformed(payload: bytes) -> None:
    with pytest.raises(MalformedEvent):
        read_all(SSEReader("m"), [b"data: " + payload + b"\n\n"])


def test_a_missing_total_is_the_sum_of_prompt_and_completion() -> None:
    body = event({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
    assert read_all(SSEReader("m"), [body]) == [UpstreamUsage(3, 4, 7)]


def test_cached_and_reasoning_token_details_are_read_from_the_usage() -> None:
    reported = usage(30, 12)
    details = {
        **reported["usage"],  # type: ignore[dict-item]
        "prompt_tokens_details": {"cached_tokens": 20, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 5},
    }
    items = read_all(SSEReader("m"), [event({**reported, "usage": details})])
    assert items == [UpstreamUsage(30, 12, 42, cached_tokens=20, reasoning_tokens=5)]
    plain = read_all(SSEReader("m"), [event(usage(30, 12))])
    assert plain == [UpstreamUsage(30, 12, 42)]
    assert plain[0].cached_tokens is None  # type: ignore[attr-defined]
