"""A frame is framed once, as the WebSocket library frames it, and an outbox hands its frames
to the socket in writes of a bounded size."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from websockets.frames import Frame as WireFrame
from websockets.frames import Opcode

from services.notifier.client import Client
from services.notifier.frames import Frame, chunk_frame, control
from shared.contracts import TokenChunk, TokenChunkData


@pytest.mark.parametrize("chars", [0, 125, 126, 65_535, 65_536, 200_000])
def test_a_frame_is_framed_as_the_library_frames_an_unmasked_text_message(chars: int) -> None:
    text = "é" * (chars // 2) + "x" * (chars % 2)  # two bytes a letter: the length is in bytes
    frame = Frame(text, "chunk")

    expected = WireFrame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])
    assert frame.ws == expected
    assert frame.ws is frame.ws, "framed again on a second use"


def test_a_lone_surrogate_is_replaced_rather_than_failing_the_framing() -> None:
    frame = Frame('{"text":"a\ud800b"}', "chunk")

    assert frame.ws.endswith(b'{"text":"a?b"}')


def test_an_outbox_hands_over_frames_up_to_the_budget_and_keeps_the_rest_in_order() -> None:
    woken: list[Client] = []
    client = Client(None, 100, wake=woken.append)
    frames = [control("pong", id=i) for i in range(10)]
    for frame in frames:
        assert client.offer(frame)
    size = len(frames[0].text)

    first = client.take_now(3 * size)
    second = client.take_now(1)  # at least one, however small the budget
    rest = client.take_now(10_000)

    assert first == frames[:3]
    assert second == frames[3:4]
    assert rest == frames[4:]
    assert len(client) == 0
    assert client.queued_chars == 0
    assert woken == [client] * 10


def test_closing_an_outbox_wakes_its_writer() -> None:
    woken: list[Client] = []
    client = Client(None, 4, wake=woken.append)

    client.close(4008, "slow consumer")

    assert woken == [client]
    assert client.closing == (4008, "slow consumer")


def _chunk(tool_calls: list[dict[str, object]] | None) -> TokenChunk:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    data = TokenChunkData(
        attempt=1,
        seq=3,
        text="",
        tokens=2,
        first_token_at=now,
        emitted_at=now,
        tool_calls=tool_calls,  # type: ignore[arg-type]
    )
    return TokenChunk(job_id="job-1", trace_id="0" * 32, data=data)


def test_a_chunk_frame_carries_its_tool_call_deltas_in_openai_shape_over_ws_and_sse() -> None:
    deltas = [
        {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "f", "arguments": ""},
        },
        {"index": 0, "function": {"arguments": '{"a": 1}'}},
    ]
    frame = chunk_frame(_chunk(deltas))
    assert json.loads(frame.text)["tool_calls"] == deltas  # absent keys left out, as OpenAI does
    assert frame.ws.endswith(frame.text.encode())
    assert frame.sse == f"id: 1:3\nevent: chunk\ndata: {frame.text}\n\n".encode()


def test_a_text_chunk_frame_has_no_tool_calls_key() -> None:
    assert "tool_calls" not in json.loads(chunk_frame(_chunk(None)).text)
