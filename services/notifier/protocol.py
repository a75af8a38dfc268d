"""Client messages of the WebSocket protocol (docs/websocket-protocol.md), parsed strictly.

A message that cannot be understood raises `BadMessage` with a code and a
sentence the client can act on; it never ends the connection by itself.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

MAX_ID_LENGTH = 200
MAX_PING_ID_LENGTH = 64  # a pong echoes the id: a short one keeps every reply small
MAX_SAFE_INT = 2**53  # what any JSON reader holds exactly


def clean_text(text: str) -> bool:
    """Printable and encodable: no control characters, no lone surrogates (unsendable as UTF-8)."""
    return text.isprintable()


class BadMessage(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Auth:
    token: str


@dataclass(frozen=True, slots=True)
class Subscribe:
    kind: str  # "job" | "user"
    ident: str
    last_seq: int = -1
    attempt: int | None = None

    @property
    def channel(self) -> str:
        return f"{self.kind}:{self.ident}"


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    channel: str


@dataclass(frozen=True, slots=True)
class Ping:
    ident: Any = None


Message = Auth | Subscribe | Unsubscribe | Ping


def parse_channel(channel: object) -> tuple[str, str]:
    if not isinstance(channel, str):
        raise BadMessage("bad_channel", "'channel' must be a string like 'job:<id>' or 'user:<id>'")
    kind, sep, ident = channel.partition(":")
    if (
        not sep
        or kind not in ("job", "user")
        or not ident
        or len(ident) > MAX_ID_LENGTH
        or not clean_text(ident)
    ):
        raise BadMessage(
            "bad_channel", f"unknown channel {channel[:80]!r}: use 'job:<id>' or 'user:<id>'"
        )
    return kind, ident


def _int(body: dict[str, Any], key: str, default: int | None, minimum: int) -> int | None:
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BadMessage("bad_message", f"'{key}' must be an integer >= {minimum}")
    return value


def _ping_id(value: object) -> object:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, int) and -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
        return value
    if isinstance(value, str) and len(value) <= MAX_PING_ID_LENGTH and clean_text(value):
        return value
    raise BadMessage(
        "bad_message",
        f"'id' must be a number or a printable string of at most {MAX_PING_ID_LENGTH} characters",
    )


def parse_message(raw: str | bytes) -> Message:
    if isinstance(raw, bytes):
        raise BadMessage("bad_message", "send JSON text frames, not binary frames")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
        raise BadMessage("bad_json", "the message is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadMessage("bad_message", "a message is a JSON object with a 'type'")
    kind = body.get("type")
    if kind == "auth":
        token = body.get("token")
        if not isinstance(token, str) or not token:
            raise BadMessage("bad_message", "'auth' needs a 'token' string")
        return Auth(token)
    if kind == "subscribe":
        channel_kind, ident = parse_channel(body.get("channel"))
        last_seq = _int(body, "last_seq", -1, -1)
        attempt = _int(body, "attempt", None, 1)
        return Subscribe(channel_kind, ident, -1 if last_seq is None else last_seq, attempt)
    if kind == "unsubscribe":
        channel_kind, ident = parse_channel(body.get("channel"))
        return Unsubscribe(f"{channel_kind}:{ident}")
    if kind == "ping":
        return Ping(_ping_id(body.get("id")))
    shown = kind[:40] if isinstance(kind, str) else kind
    raise BadMessage(
        "unknown_type",
        f"unknown message type {shown!r}: expected auth, subscribe, unsubscribe or ping",
    )
