"""The sticky assignment: a join moves only the joiner's share, a leave only the leaver's
partitions, and no partition is given to a member while another live member holds it."""

from __future__ import annotations

from aiokafka import TopicPartition
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

from services.streamer.sticky import Member, StickyAssignor, decode_held, sticky_assign

TOPICS = frozenset({"jobs"})
ALL = [TopicPartition("jobs", p) for p in range(6)]


def member(*partitions: int) -> Member:
    return Member(TOPICS, frozenset(TopicPartition("jobs", p) for p in partitions))


def moved(before: dict[str, list[TopicPartition]], after: dict[str, list[TopicPartition]]) -> int:
    owner = {tp: m for m, tps in before.items() for tp in tps}
    return sum(1 for m, tps in after.items() for tp in tps if owner.get(tp, m) != m)


def test_a_first_member_takes_every_partition() -> None:
    assert sticky_assign(ALL, {"a": member()}) == {"a": ALL}


def test_a_join_moves_only_the_joining_members_share_and_never_to_two_at_once() -> None:
    first = sticky_assign(ALL, {"a": member(0, 1, 2, 3, 4, 5), "b": member()})
    # a keeps its share; what it gives away goes to nobody while a still holds it.
    assert len(first["a"]) == 3
    assert first["b"] == []
    second = sticky_assign(ALL, {"a": member(*(tp.partition for tp in first["a"])), "b": member()})
    assert second["a"] == first["a"]
    assert sorted(second["a"] + second["b"]) == ALL
    assert len(second["b"]) == 3
    assert moved({"a": ALL}, second) == 3


def test_a_leave_gives_away_only_the_leavers_partitions() -> None:
    before = {"a": member(0, 1), "b": member(2, 3), "c": member(4, 5)}
    after = sticky_assign(ALL, {"a": before["a"], "b": before["b"]})
    assert set(after["a"]) >= {TopicPartition("jobs", 0), TopicPartition("jobs", 1)}
    assert set(after["b"]) >= {TopicPartition("jobs", 2), TopicPartition("jobs", 3)}
    assert sorted(after["a"] + after["b"]) == ALL
    assert len(after["a"]) == len(after["b"]) == 3


def test_a_balanced_group_keeps_every_partition_where_it_is() -> None:
    members = {"a": member(0, 2, 4), "b": member(1, 3, 5)}
    after = sticky_assign(ALL, members)
    assert {m: {tp.partition for tp in tps} for m, tps in after.items()} == {
        "a": {0, 2, 4},
        "b": {1, 3, 5},
    }


def test_a_partition_held_by_two_members_goes_to_neither_until_they_let_go() -> None:
    after = sticky_assign(ALL, {"a": member(0, 1, 2), "b": member(2, 3, 4)})
    assert TopicPartition("jobs", 2) not in after["a"] + after["b"]


def test_the_assignor_reads_what_each_member_sent_as_held() -> None:
    held = [TopicPartition("jobs", 0), TopicPartition("jobs", 1)]
    sent = StickyAssignor(lambda: held).metadata(["jobs"])
    assert decode_held(sent.user_data) == frozenset(held)
    assert decode_held(b"not json") == frozenset()

    class Cluster:
        def partitions_for_topic(self, topic: str) -> set[int]:
            return {0, 1, 2, 3}

    joiner = ConsumerProtocolMemberMetadata(0, ["jobs"], b"")
    out = StickyAssignor(list).assign(Cluster(), {"a": sent, "b": joiner})
    assert out["a"].partitions() == held
    assert out["b"].partitions() == [TopicPartition("jobs", 2), TopicPartition("jobs", 3)]


def test_every_member_gets_its_share_of_every_topic() -> None:
    topics = frozenset({"high", "low"})
    partitions = [TopicPartition(t, p) for t in sorted(topics) for p in range(4)]
    after = sticky_assign(
        partitions, {"a": Member(topics, frozenset()), "b": Member(topics, frozenset())}
    )
    for tps in after.values():
        assert sorted(tp.topic for tp in tps) == ["high", "high", "low", "low"]
