"""Remembered cancels: only the owner or an admin, bounded, expiring."""

from __future__ import annotations

from services.streamer.cancels import Owners, PendingCancels, may_cancel
from services.streamer.settings import StreamerSettings
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


def test_the_bound_counts_cancels_not_jobs_and_reports_evictions() -> None:
    p = PendingCancels(capacity=3)
    evicted = [p.remember("j1", CancelJobData(user_id=f"u{i}"), 0.0) for i in range(5)]
    assert evicted == [0, 0, 0, 1, 1]
    assert len(p) == 3
    # The oldest cancels went first: u0 and u1 are gone, u4 is kept.
    assert p.take("j1", "u0", 0.0) is None
    assert p.take("j1", "u4", 0.0) is not None
    assert len(p) == 0


def test_the_oldest_job_loses_its_cancels_first() -> None:
    p = PendingCancels(capacity=2)
    p.remember("old", OWNER, 0.0)
    p.remember("new", OWNER, 1.0)
    assert p.remember("newest", OWNER, 2.0) == 1
    assert p.take("old", "alice", 2.0) is None
    assert p.take("new", "alice", 2.0) == OWNER


def test_a_repeated_cancel_by_the_same_user_is_kept_once() -> None:
    p = PendingCancels(capacity=10)
    for _ in range(50):
        p.remember("j1", STRANGER, 0.0)
    assert len(p) == 1


def test_the_first_recorded_owner_stays_whatever_a_later_record_claims() -> None:
    owners = Owners(capacity=10)
    assert owners.record("j1", "alice") == "alice"
    assert owners.record("j1", "mallory") == "alice"
    assert owners.get("j1") == "alice"
    assert owners.get("j2") is None


def test_known_owners_are_bounded_and_the_least_recently_seen_go() -> None:
    owners = Owners(capacity=2)
    owners.record("j1", "a")
    owners.record("j2", "b")
    owners.record("j1", "a")  # seen again: kept
    owners.record("j3", "c")
    assert len(owners) == 2
    assert owners.get("j2") is None
    assert owners.get("j1") == "a"


def test_the_cancel_bound_setting_also_answers_to_its_older_name() -> None:
    new = StreamerSettings(streamjobs_auth_secret="s" * 32, streamer_max_remembered_cancels=5)
    old = StreamerSettings(streamjobs_auth_secret="s" * 32, streamer_cancel_capacity=6)
    assert (new.streamer_max_remembered_cancels, old.streamer_max_remembered_cancels) == (5, 6)
