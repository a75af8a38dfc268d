"""Remembered cancels: only the owner or an admin, bounded, expiring."""

from __future__ import annotations

from services.streamer.cancels import PendingCancels, may_cancel
from shared.contracts import CancelJobData

OWNER = CancelJobData(user_id="alice")
STRANGER = CancelJobData(user_id="mallory")
ADMIN = CancelJobData(user_id="root", admin=True)


def test_only_the_owner_or_an_admin_may_cancel() -> None:
    assert may_cancel(OWNER, "alice")
    assert may_cancel(ADMIN, "alice")
    assert not may_cancel(STRANGER, "alice")


def test_a_remembered_owner_cancel_is_taken_once() -> None:
    p = PendingCancels()
    p.remember("j1", OWNER, 0.0)
    assert p.take("j1", "alice", 1.0) == OWNER
    assert p.take("j1", "alice", 1.0) is None


def test_a_strangers_cancel_does_not_hide_a_later_owner_cancel() -> None:
    p = PendingCancels()
    p.remember("j1", STRANGER, 0.0)
    assert p.take("j1", "alice", 0.0) is None
    p.remember("j1", OWNER, 0.0)
    assert p.take("j1", "alice", 0.0) == OWNER


def test_cancels_expire_after_their_ttl() -> None:
    p = PendingCancels(ttl_s=10)
    p.remember("j1", OWNER, 0.0)
    assert p.take("j1", "alice", 11.0) is None
    assert len(p) == 0


def test_the_oldest_cancels_go_beyond_capacity() -> None:
    p = PendingCancels(capacity=2)
    for i in range(3):
        p.remember(f"j{i}", OWNER, float(i))
    assert len(p) == 2
    assert p.take("j0", "alice", 3.0) is None
    assert p.take("j2", "alice", 3.0) == OWNER
