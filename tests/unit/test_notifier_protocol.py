"""Parsing of the notifier's client messages and of SSE resume ids."""

from __future__ import annotations

import json

import pytest

from services.notifier.protocol import Auth, BadMessage, Ping, Subscribe, Unsubscribe, parse_message
from services.notifier.resume import parse_last_event_id


def test_messages_of_the_protocol_parse() -> None:
    assert parse_message('{"type":"auth","token":"t"}') == Auth("t")
    assert parse_message('{"type":"subscribe","channel":"job:abc","last_seq":4,"attempt":2}') == (
        Subscribe("job", "abc", 4, 2)
    )
    assert parse_message('{"type":"subscribe","channel":"user:u"}') == Subscribe("user", "u")
    assert parse_message('{"type":"unsubscribe","channel":"job:a:b"}') == Unsubscribe("job:a:b")
    assert parse_message('{"type":"ping","id":1}') == Ping(1)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{", "bad_json"),
        ("[]", "bad_message"),
        (b"\x00", "bad_message"),
        ('{"type":"nope"}', "unknown_type"),
        ('{"type":"auth"}', "bad_message"),
        ('{"type":"subscribe"}', "bad_channel"),
        ('{"type":"subscribe","channel":"job:"}', "bad_channel"),
        ('{"type":"subscribe","channel":"room:1"}', "bad_channel"),
        (json.dumps({"type": "subscribe", "channel": "job:" + "x" * 201}), "bad_channel"),
        ('{"type":"subscribe","channel":"job:a","last_seq":-2}', "bad_message"),
        ('{"type":"subscribe","channel":"job:a","last_seq":true}', "bad_message"),
        ('{"type":"subscribe","channel":"job:a","attempt":0}', "bad_message"),
    ],
)
def test_bad_messages_are_named(raw: str | bytes, code: str) -> None:
    with pytest.raises(BadMessage) as caught:
        parse_message(raw)
    assert caught.value.code == code
    assert caught.value.message


def test_last_event_id_is_attempt_colon_seq() -> None:
    assert parse_last_event_id(None) == (-1, None)
    assert parse_last_event_id("2:17") == (17, 2)
    for bad in ("17", "a:b", "1:-5"):
        with pytest.raises(ValueError, match="Last-Event-ID"):
            parse_last_event_id(bad)
