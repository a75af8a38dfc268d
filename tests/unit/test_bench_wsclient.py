"""The bench's bare WebSocket client: frames as RFC 6455 lays them out."""

from __future__ import annotations

import struct

from tests.bench.wsclient import OP_PING, OP_TEXT, client_frame, server_frames


def unmask(frame: bytes) -> tuple[int, bytes]:
    n, at = frame[1] & 0x7F, 2
    if n == 126:
        n, at = struct.unpack_from("!H", frame, 2)[0], 4
    mask = frame[at : at + 4]
    body = frame[at + 4 :]
    assert len(body) == n
    return frame[0], bytes(b ^ mask[i % 4] for i, b in enumerate(body))


def test_a_client_frame_is_final_masked_and_unmasks_to_its_payload() -> None:
    payload = b'{"type":"auth","token":"x"}'
    frame = client_frame(OP_TEXT, payload)
    assert frame[1] & 0x80  # the mask bit a server requires of every client frame
    assert unmask(frame) == (0x80 | OP_TEXT, payload)


def test_a_client_frame_over_125_bytes_carries_a_16_bit_length() -> None:
    payload = b"x" * 300
    frame = client_frame(OP_TEXT, payload)
    assert frame[1] & 0x7F == 126
    assert unmask(frame) == (0x81, payload)


def test_server_frames_are_taken_whole_and_a_partial_one_is_left_for_later() -> None:
    long = b"y" * 200
    buf = bytearray(
        bytes([0x81, 5])
        + b"hello"
        + bytes([0x89, 0])
        + bytes([0x81, 126])
        + struct.pack("!H", 200)
        + long
        + bytes([0x81, 10])
        + b"part"
    )
    assert server_frames(buf) == [(OP_TEXT, b"hello"), (OP_PING, b""), (OP_TEXT, long)]
    assert bytes(buf) == bytes([0x81, 10]) + b"part"
    buf += b"ial!!!"
    assert server_frames(buf) == [(OP_TEXT, b"partial!!!")]
    assert not buf
