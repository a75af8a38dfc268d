"""A sticky partition assignment that never gives a partition to two live members at once.

Every member sends, with its join, the partitions it still holds (assigned to it or with
jobs of it still running). A member keeps what it holds up to its share of the balance.
A partition is given to a member only when no live member holds it: one taken from an
over-full member is assigned to nobody in this generation; its holder cuts its jobs,
commits, and rejoins, and the next generation gives it to a member with room. So a
member joining takes over only its share, a member leaving gives away only its own
partitions, and a killed member's partitions, held by nobody once it is evicted, move at
once. The eager protocol still revokes everything on each rebalance; holding a revoked
partition is what keeps its jobs running across it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

from aiokafka import TopicPartition
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

VERSION = 0


@dataclass(frozen=True, slots=True)
class Member:
    topics: frozenset[str]
    held: frozenset[TopicPartition]


def encode_held(held: Iterable[TopicPartition]) -> bytes:
    by_topic: dict[str, list[int]] = {}
    for tp in held:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return json.dumps({t: sorted(ps) for t, ps in sorted(by_topic.items())}).encode()


def decode_held(user_data: bytes) -> frozenset[TopicPartition]:
    """What a member holds; unreadable user data (another version) holds nothing."""
    try:
        by_topic = json.loads(user_data) if user_data else {}
        return frozenset(
            TopicPartition(str(topic), int(p)) for topic, ps in by_topic.items() for p in ps
        )
    except (ValueError, TypeError, AttributeError):
        return frozenset()


def sticky_assign(
    partitions: Collection[TopicPartition], members: Mapping[str, Member]
) -> dict[str, list[TopicPartition]]:
    """Each member's partitions; those a live member holds but gives away go to nobody.

    Balanced topic by topic, so that every member has its share of every priority band.
    """
    out: dict[str, list[TopicPartition]] = {m: [] for m in members}
    holders: dict[TopicPartition, list[str]] = {}
    for member_id, member in members.items():
        for tp in member.held:
            if tp in partitions and tp.topic in member.topics:
                holders.setdefault(tp, []).append(member_id)
    # Held by two (one of them paused past its session and back): both must let go first.
    sole = {tp: ids[0] for tp, ids in holders.items() if len(ids) == 1}
    for topic in sorted({tp.topic for tp in partitions}):
        takers = [m for m in sorted(members) if topic in members[m].topics]
        if takers:
            of_topic = sorted(tp for tp in partitions if tp.topic == topic)
            _assign_topic(of_topic, takers, holders, sole, out)
    return {m: sorted(tps) for m, tps in out.items()}


def _assign_topic(
    partitions: list[TopicPartition],
    takers: list[str],
    holders: Mapping[TopicPartition, list[str]],
    sole: Mapping[TopicPartition, str],
    out: dict[str, list[TopicPartition]],
) -> None:
    base, extra = divmod(len(partitions), len(takers))
    mine = {m: [tp for tp in partitions if sole.get(tp) == m] for m in takers}
    # The larger shares go to the members holding most here (fewer moves), then to those
    # with fewest partitions so far (balance across topics).
    ranked = sorted(takers, key=lambda m: (-len(mine[m]), len(out[m]), m))
    share = {m: base + (1 if i < extra else 0) for i, m in enumerate(ranked)}
    got = {m: mine[m][: share[m]] for m in takers}
    for tp in partitions:
        if tp in holders:
            continue  # kept by its holder above, or given to nobody while it is held
        # The member furthest below its share takes it (ties: the first ranked).
        taker = min(takers, key=lambda m: (len(got[m]) - share[m], ranked.index(m)))
        got[taker].append(tp)
    for m in takers:
        out[m].extend(got[m])


class StickyAssignor(AbstractPartitionAssignor):  # type: ignore[misc]  # untyped base
    """One per consumer: `held` tells, at each join, the partitions this member holds."""

    name = "streamer-sticky"
    version = VERSION

    def __init__(self, held: Callable[[], Iterable[TopicPartition]]) -> None:
        self.held = held
        # Set when a generation's assignment came from this assignor (not a fallback one).
        self.chosen = False

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        return ConsumerProtocolMemberMetadata(VERSION, sorted(topics), encode_held(self.held()))

    def assign(
        self, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        topics = {t for meta in members.values() for t in meta.subscription}
        partitions = {
            TopicPartition(topic, p)
            for topic in topics
            for p in cluster.partitions_for_topic(topic) or ()
        }
        assigned = sticky_assign(
            partitions,
            {
                m: Member(frozenset(meta.subscription), decode_held(meta.user_data))
                for m, meta in members.items()
            },
        )
        out = {}
        for member_id, tps in assigned.items():
            by_topic: dict[str, list[int]] = {}
            for tp in tps:
                by_topic.setdefault(tp.topic, []).append(tp.partition)
            out[member_id] = ConsumerProtocolMemberAssignment(
                VERSION, sorted(by_topic.items()), b""
            )
        return out

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        """Called by aiokafka only on the assignor the group chose for this generation."""
        self.chosen = True
