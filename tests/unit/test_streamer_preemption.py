"""Preemption over fake ports: an urgent job waiting with every slot busy stops the youngest
running job of a preemptible band, which waits first of its band and runs again as its next
attempt on the same record (its offset never released in between)."""

from __future__ import annotations

import asyncio

from services.streamer.preemption import Preemption
from shared.topics import Priority
from tests.support import wait_for
from tests.unit.streamer_fakes import Streamer, cancel_by, make_running, streamer

LOW = Preemption(Priority.LOW.rank, max_attempts=4)


async def started(s: Streamer, count: int) -> None:
    await wait_for(lambda: len(s.upstream.attempts) == count, message=f"{count} attempts began")
    await asyncio.sleep(0)  # the last one's reader is set when its task first runs


async def test_an_urgent_job_stops_the_youngest_low_job_which_runs_next_on_its_record() -> None:
    async with streamer(slots=2, preemption=LOW) as s:
        s.dispatcher.admit(make_running("old", priority=Priority.LOW, offset=0), 3)
        await started(s, 1)
        s.dispatcher.admit(make_running("young", priority=Priority.LOW, offset=1), 3)
        await started(s, 2)
        s.dispatcher.admit(make_running("urgent", priority=Priority.URGENT, offset=2), 0)
        await started(s, 3)
        assert s.upstream.attempts == [("old", 1), ("young", 1), ("urgent", 1)]
        assert set(s.inflight.running) == {"old", "urgent"}
        assert s.ledger.released == [], "the preempted job's offset stays in flight"
        # A low job fetched meanwhile queues behind the preempted one.
        s.dispatcher.admit(make_running("later", priority=Priority.LOW, offset=3), 3)
        assert s.dispatcher.backlog(Priority.LOW.rank) == 2

        s.upstream.finish("urgent")
        await started(s, 4)
        assert s.upstream.attempts[-1] == ("young", 2), "it ran again, as its next attempt"
        assert s.ledger.claims[-1] == (1, "young", 2), "on the same record"
        s.upstream.finish("young")
        await wait_for(lambda: 1 in s.ledger.released, message="its record was released once")
        assert s.ledger.released.count(1) == 1
        assert "old" in s.inflight.running, "the older low job was never stopped"


async def test_one_job_is_stopped_per_urgent_job_waiting() -> None:
    async with streamer(slots=3, preemption=LOW) as s:
        for i in range(3):
            s.dispatcher.admit(make_running(f"low{i}", priority=Priority.LOW, offset=i), 3)
            await started(s, i + 1)
        s.dispatcher.admit(make_running("urgent", priority=Priority.URGENT, offset=9), 0)
        await started(s, 4)
        await asyncio.sleep(0.05)
        assert s.upstream.attempts[-1] == ("urgent", 1)
        assert set(s.inflight.running) == {"low0", "low1", "urgent"}
        assert s.dispatcher.backlog(Priority.LOW.rank) == 1


async def test_jobs_above_the_preemptible_band_are_never_stopped() -> None:
    async with streamer(slots=1, preemption=LOW) as s:
        s.dispatcher.admit(make_running("normal", offset=0), Priority.NORMAL.rank)
        await started(s, 1)
        s.dispatcher.admit(make_running("urgent", priority=Priority.URGENT, offset=1), 0)
        await asyncio.sleep(0.05)
        assert s.upstream.attempts == [("normal", 1)]
        assert s.dispatcher.backlog(Priority.URGENT.rank) == 1, "the urgent job waits"
        s.upstream.finish("normal")
        await started(s, 2)
        assert s.upstream.attempts[-1] == ("urgent", 1)


async def test_preemption_off_lets_urgent_jobs_wait_for_a_slot() -> None:
    async with streamer(slots=1) as s:
        s.dispatcher.admit(make_running("low", priority=Priority.LOW), Priority.LOW.rank)
        await started(s, 1)
        s.dispatcher.admit(make_running("urgent", priority=Priority.URGENT, offset=1), 0)
        await asyncio.sleep(0.05)
        assert s.upstream.attempts == [("low", 1)]


async def test_a_job_is_preempted_once_at_most() -> None:
    async with streamer(slots=1, preemption=LOW) as s:
        s.dispatcher.admit(make_running("low", priority=Priority.LOW, offset=0), 3)
        await started(s, 1)
        s.dispatcher.admit(make_running("urgent1", priority=Priority.URGENT, offset=1), 0)
        await started(s, 2)
        s.upstream.finish("urgent1")
        await started(s, 3)
        assert s.upstream.attempts[-1] == ("low", 2)
        s.dispatcher.admit(make_running("urgent2", priority=Priority.URGENT, offset=2), 0)
        await asyncio.sleep(0.05)
        assert s.upstream.attempts[-1] == ("low", 2), "the second urgent job waits"
        s.upstream.finish("low")
        await started(s, 4)
        assert s.upstream.attempts[-1] == ("urgent2", 1)


async def test_a_job_on_its_last_allowed_attempt_is_not_preempted() -> None:
    last = Preemption(Priority.LOW.rank, max_attempts=2)
    async with streamer(slots=1, preemption=last) as s:
        running = make_running("low", priority=Priority.LOW, attempt=2)
        s.dispatcher.admit(running, Priority.LOW.rank)
        await started(s, 1)
        s.dispatcher.admit(make_running("urgent", priority=Priority.URGENT, offset=1), 0)
        await asyncio.sleep(0.05)
        assert s.upstream.attempts == [("low", 2)], "preempting it would fail the job"


async def test_a_cancel_for_a_preempted_job_ends_it_before_it_runs_again() -> None:
    async with streamer(slots=1, preemption=LOW) as s:
        s.dispatcher.admit(make_running("low", priority=Priority.LOW, offset=0), 3)
        await started(s, 1)
        s.dispatcher.admit(make_running("urgent", priority=Priority.URGENT, offset=1), 0)
        await started(s, 2)
        s.cancels.on_cancel("low", cancel_by("alice"))
        await wait_for(
            lambda: [j for j, _ in s.events.cancelled_jobs] == ["low"],
            message="the waiting preempted job was cancelled",
        )
        await wait_for(lambda: 0 in s.ledger.released, message="its record was released")
        s.upstream.finish("urgent")
        await wait_for(lambda: 1 in s.ledger.released, message="the urgent job ended")
        assert s.upstream.attempts == [("low", 1), ("urgent", 1)], "it never ran again"
