"""The intake across rebalances, over a fake consumer: under the sticky assignor a revocation
keeps the jobs, the next assignment cuts only those of partitions that moved; under round
robin every revoked partition's jobs are cut before the callback returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition

from services.streamer.claims import Claims
from services.streamer.intake import Intake
from services.streamer.sticky import StickyAssignor
from tests.support import wait_for

A = TopicPartition("jobs", 0)
B = TopicPartition("jobs", 1)


@dataclass
class Coordinator:
    rejoins: int = 0

    def request_rejoin(self) -> None:
        self.rejoins += 1


@dataclass
class FakeConsumer:
    _coordinator: Coordinator = field(default_factory=Coordinator)
    seeks: dict[TopicPartition, int] = field(default_factory=dict)
    commits: list[dict[TopicPartition, int]] = field(default_factory=list)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp] = offset

    async def commit(self, offsets: Mapping[TopicPartition, Any]) -> None:
        self.commits.append({tp: meta.offset for tp, meta in offsets.items()})


class FakeAdmin:
    async def list_consumer_group_offsets(
        self, group: str, partitions: list[Any]
    ) -> dict[Any, Any]:
        return {}


class NoClaims:
    async def load(self, positions: Mapping[TopicPartition, int]) -> tuple[Claims, int]:
        return Claims(), 0


@dataclass
class Setup:
    intake: Intake
    consumer: FakeConsumer
    assignor: StickyAssignor
    cut: list[set[TopicPartition]]


def setup() -> Setup:
    consumer = FakeConsumer()
    assignor = StickyAssignor(set)
    cut: list[set[TopicPartition]] = []

    async def on_revoke(lost: set[TopicPartition]) -> None:
        cut.append(set(lost))

    intake = Intake(
        "jobs",
        consumer,  # type: ignore[arg-type]
        ["jobs"],
        rank_of_topic=lambda _t, _j: 0,
        offer=lambda _r, _rank: None,
        dead_letter=lambda _r: None,  # type: ignore[arg-type,return-value]
        backlog=lambda _rank: 0,
        prefetch=8,
        on_revoke=on_revoke,
        admin=FakeAdmin(),  # type: ignore[arg-type]
        group_id="g",
        claims_source=NoClaims(),
        assignor=assignor,
    )
    assignor.held = intake.held
    return Setup(intake, consumer, assignor, cut)


async def rebalance(s: Setup, assigned: set[TopicPartition], *, sticky: bool = True) -> None:
    await s.intake.revoked(s.intake.held())
    s.assignor.chosen = sticky  # what aiokafka's on_assignment does for the chosen assignor
    await s.intake.assigned(assigned)
    await wait_for(s.intake._claims_ready.is_set, message="claims read")


async def test_a_sticky_rebalance_cuts_only_the_partitions_that_moved_and_rejoins() -> None:
    s = setup()
    await rebalance(s, {A, B})
    for tp in (A, B):
        s.intake.offsets.track(tp, 5)
        s.intake.offsets.track(tp, 6)
    s.intake.done(A, 5)
    await s.intake.revoked({A, B})
    assert s.cut == [set()], "a sticky revocation cut running jobs"
    assert s.intake.held() == {A, B}
    s.assignor.chosen = True
    await s.intake.assigned({A})
    assert s.cut[-1] == {B}
    # A's fetch resumes after what it took, not at its commit (6 still runs here).
    assert s.consumer.seeks == {A: 7}
    assert s.consumer._coordinator.rejoins == 1
    assert s.intake.held() == {A}
    assert s.intake.offsets.fetched(B) is None


async def test_a_sticky_rebalance_that_gives_everything_back_cuts_nothing() -> None:
    s = setup()
    await rebalance(s, {A, B})
    s.intake.offsets.track(A, 3)
    await rebalance(s, {A, B})
    assert not any(s.cut), "a partition assigned back had its jobs cut"
    assert s.consumer._coordinator.rejoins == 0
    assert s.consumer.seeks == {A: 4}


async def test_under_round_robin_a_revocation_cuts_every_job_before_it_returns() -> None:
    s = setup()
    await rebalance(s, {A, B}, sticky=False)
    s.intake.offsets.track(A, 3)
    await s.intake.revoked({A, B})
    assert s.cut[-1] == {A, B}
    assert s.intake.offsets.fetched(A) is None
    assert s.intake.held() == set()
