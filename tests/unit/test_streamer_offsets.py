"""Commit tracking: only a contiguous prefix of finished records is committed."""

from __future__ import annotations

from services.streamer.offsets import OffsetTracker


def test_an_offset_is_committed_only_after_every_earlier_one_finished() -> None:
    t: OffsetTracker[str] = OffsetTracker()
    for o in (10, 11, 12):
        t.track("p0", o)
    t.done("p0", 11)
    t.done("p0", 12)
    assert t.committable() == {}
    t.done("p0", 10)
    assert t.committable() == {"p0": 13}


def test_in_order_completion_advances_step_by_step() -> None:
    t: OffsetTracker[str] = OffsetTracker()
    t.track("p0", 0)
    t.track("p0", 1)
    t.done("p0", 0)
    assert t.committable() == {"p0": 1}
    assert t.committable() == {}
    t.done("p0", 1)
    assert t.committable() == {"p0": 2}


def test_partitions_are_independent() -> None:
    t: OffsetTracker[str] = OffsetTracker()
    t.track("a", 5)
    t.track("b", 7)
    t.track("b", 8)
    t.done("b", 8)
    t.done("a", 5)
    assert t.committable() == {"a": 6}
    assert t.inflight("b") == 2


def test_offsets_with_gaps_between_them_commit_past_the_gap() -> None:
    # Compacted topics and transaction markers leave holes in offsets.
    t: OffsetTracker[str] = OffsetTracker()
    t.track("p", 3)
    t.track("p", 9)
    t.done("p", 9)
    t.done("p", 3)
    assert t.committable() == {"p": 10}


def test_a_refetched_record_is_not_tracked_twice() -> None:
    t: OffsetTracker[str] = OffsetTracker()
    t.track("p", 1)
    t.track("p", 1)
    t.done("p", 1)
    assert t.committable() == {"p": 2}
    assert t.inflight("p") == 0


def test_completions_of_a_forgotten_partition_are_ignored() -> None:
    t: OffsetTracker[str] = OffsetTracker()
    t.track("p", 1)
    t.forget("p")
    t.done("p", 1)
    assert t.committable() == {}
