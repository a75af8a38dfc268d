"""Revocation records feed the verifier: revoke, withdraw, and skip what cannot be read."""

from __future__ import annotations

import time

from aiokafka import ConsumerRecord

from shared.revocation import RevocationFollower, TokenRevoked
from shared.verifier import TokenVerifier

SECRET = "unit-secret-0123456789abcdef0123456789"


def record(key: bytes | None, value: bytes | None, offset: int = 0) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="p.revocations",
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=0,
        headers=[],
    )


def revoked(jti: str, exp: int) -> bytes:
    return TokenRevoked(jti=jti, exp=exp, revoked_at=int(time.time())).model_dump_json().encode()


async def test_records_revoke_and_tombstones_withdraw() -> None:
    verifier = TokenVerifier(SECRET)
    follower = RevocationFollower("127.0.0.1:1", "p", verifier)
    later = int(time.time()) + 3600
    follower._apply(record(b"t-1", revoked("t-1", later)))
    follower._apply(record(b"t-2", revoked("t-2", later), offset=1))
    assert verifier.is_revoked("t-1") and verifier.is_revoked("t-2")
    follower._apply(record(b"t-1", None, offset=2))
    assert not verifier.is_revoked("t-1")
    assert verifier.is_revoked("t-2")


async def test_unreadable_records_are_skipped_not_fatal() -> None:
    verifier = TokenVerifier(SECRET)
    follower = RevocationFollower("127.0.0.1:1", "p", verifier)
    follower._apply(record(None, revoked("t-1", int(time.time()) + 60)))
    follower._apply(record(b"t-2", b"not json"))
    follower._apply(record(b"t-3", b'{"jti": "t-3"}'))
    assert verifier.revoked_count == 0


def test_listeners_hear_each_live_revocation() -> None:
    verifier = TokenVerifier(SECRET)
    heard: list[str] = []
    verifier.on_revoke(heard.append)
    verifier.revoke("t-1", time.time() + 60)
    verifier.revoke("old", time.time() - 60)
    assert heard == ["t-1"]
