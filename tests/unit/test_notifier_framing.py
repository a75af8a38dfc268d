"""A frame is framed once, as the WebSocket library frames it, and an outbox hands its frames
to the socket in writes of a bounded size."""

from __future__ import annotations

import pytest
from websockets.frames import Frame as WireFrame
from websockets.frames import Opcode

from services.notifier.client import Client
from services.notifier.frames import Frame, control


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
