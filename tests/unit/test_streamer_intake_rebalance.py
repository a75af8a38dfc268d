"""The intake across rebalances, over a fake consumer: under the sticky assignor a revocation
keeps the jobs, the next assignment cuts only those of partitions that moved; under round
robin every revoked partition's jobs are cut before the callback returns."""

from __future__ import annotations

import asyncio
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


@dataclass
class _Position:
    position: int
    has_valid_position: bool = True


@dataclass
class FetchingConsumer(FakeConsumer):
    """Its first fetch spans a whole rebalance, then returns records 5-7 of partition A, and
    leaves A's position at `position_after` (None: the new assignment has none yet)."""

    during_fetch: Any = None
    position_after: int | None = None
    positions: dict[TopicPartition, int] = field(default_factory=dict)
    fetches: int = 0

    def assignment(self) -> set[TopicPartition]:
        return {A}

    def paused(self) -> set[TopicPartition]:
        return set()

    def state_value(self, tp: TopicPartition) -> _Position | None:
        return _Position(self.positions[tp]) if tp in self.positions else None

    @property
    def _subscription(self) -> Any:  # the path intake.consumed_position reads
        return type("S", (), {"subscription": type("A", (), {"assignment": self})()})()

    async def getmany(self, **_: Any) -> dict[TopicPartition, list[Any]]:
        self.fetches += 1
        if self.fetches > 1:
            await asyncio.sleep(3600)
        await self.during_fetch()
        if self.position_after is not None:
            self.positions[A] = self.position_after
        return {A: [Record(A.topic, A.partition, offset) for offset in (5, 6, 7)]}


@dataclass
class Record:
    topic: str
    partition: int
    offset: int


async def fetch_across_a_rebalance(position_after: int | None) -> Setup:
    s = setup()
    consumer = FetchingConsumer(position_after=position_after)
    s.intake.consumer = s.consumer = consumer  # type: ignore[assignment]
    await rebalance(s, {A}, sticky=False)
    consumer.during_fetch = lambda: rebalance(s, {A}, sticky=False)
    loop = asyncio.create_task(s.intake.fetch_loop())
    try:
        await wait_for(lambda: consumer.fetches >= 2, message="the loop fetched again")
    finally:
        loop.cancel()
    assert s.intake.offsets.fetched(A) is None, "a record fetched across a rebalance was taken"
    return s


async def test_records_of_the_next_assignment_skipped_across_a_rebalance_are_fetched_again() -> (
    None
):
    # aiokafka already consumed 5-7 in the new assignment: without a seek nobody takes them.
    s = await fetch_across_a_rebalance(position_after=8)
    assert s.consumer.seeks == {A: 5}


async def test_records_of_the_revoked_assignment_leave_the_new_position_alone() -> None:
    # The new assignment starts from its commit by itself; a seek could only skip records.
    s = await fetch_across_a_rebalance(position_after=None)
    assert s.consumer.seeks == {}
