"""The instances board: latest heartbeat per streamer, gone after silent periods, tombstones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.results.instances import FORGET_AFTER, Board
from shared.instances import StreamerHeartbeat

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def _beat(instance: str, at: datetime, *, in_use: int = 1) -> bytes:
    return (
        StreamerHeartbeat(
            instance_id=instance,
            host="h",
            pid=7,
            slots_total=4,
            slots_in_use=in_use,
            jobs_running=in_use,
            partitions=["p.jobs.normal:0"],
            loop_lag_ms=1.5,
            started_at=T0,
            sent_at=at,
            interval_s=5.0,
        )
        .model_dump_json()
        .encode()
    )


def test_the_latest_heartbeat_of_each_instance_is_shown_and_an_older_one_ignored() -> None:
    board = Board()
    board.apply(b"a", _beat("a", T0 + timedelta(seconds=5), in_use=3))
    board.apply(b"a", _beat("a", T0, in_use=1))  # a replay brings an older record late
    board.apply(b"b", _beat("b", T0))
    items = board.view(T0 + timedelta(seconds=6)).items
    assert [(i.instance_id, i.slots_in_use, i.state) for i in items] == [
        ("a", 3, "up"),
        ("b", 1, "up"),
    ]


def test_an_instance_silent_for_three_periods_is_gone_and_listed_after_those_up() -> None:
    board = Board(stale_periods=3)
    board.apply(b"old", _beat("old", T0))
    board.apply(b"new", _beat("new", T0 + timedelta(seconds=14)))
    at_limit = board.view(T0 + timedelta(seconds=15)).items
    assert {i.instance_id: i.state for i in at_limit} == {"old": "up", "new": "up"}
    later = board.view(T0 + timedelta(seconds=16)).items
    assert [(i.instance_id, i.state) for i in later] == [("new", "up"), ("old", "gone")]


def test_a_tombstone_removes_the_instance_and_a_long_gone_one_is_forgotten() -> None:
    board = Board()
    board.apply(b"a", _beat("a", T0))
    board.apply(b"b", _beat("b", T0))
    board.apply(b"a", None)
    assert [i.instance_id for i in board.view(T0).items] == ["b"]
    assert board.view(T0 + FORGET_AFTER + timedelta(seconds=1)).items == []


def test_a_bad_or_keyless_record_is_skipped_and_the_board_goes_on() -> None:
    board = Board()
    board.apply(b"a", b"{not json")
    board.apply(None, _beat("x", T0))
    board.apply(b"b", _beat("b", T0))
    assert [i.instance_id for i in board.view(T0).items] == ["b"]
