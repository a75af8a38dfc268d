"""Delayed retries and the running jobs' tasks, alone."""

from __future__ import annotations

import asyncio

from services.streamer.delayed import DelayedRetries
from services.streamer.inflight import InFlight
from services.streamer.reruns import next_attempt
from tests.unit.streamer_fakes import make_running


def holding(rank: int, *dues: tuple[str, float]) -> DelayedRetries:
    delayed = DelayedRetries()
    for job_id, due in dues:
        running = make_running(job_id)
        running.due = due
        delayed.hold(running, rank)
    return delayed


def test_retries_come_out_by_due_time_and_only_once_due() -> None:
    delayed = holding(2, ("late", 30.0), ("early", 10.0), ("tie", 10.0))
    assert delayed.next_due() == 10.0
    assert [(r.job.job_id, rank) for r, rank in delayed.pop_due(20.0)] == [
        ("early", 2),
        ("tie", 2),
    ]
    assert len(delayed) == 1
    assert delayed.next_due() == 30.0


def test_dropped_retries_leave_the_rest_in_order() -> None:
    delayed = holding(1, ("a", 3.0), ("b", 1.0), ("c", 2.0))
    dropped = delayed.drop(lambda r: r.job.job_id == "b")
    assert [r.job.job_id for r in dropped] == ["b"]
    assert [r.job.job_id for r, _ in delayed.pop_due(10.0)] == ["c", "a"]
    assert delayed.next_due() is None


def test_the_next_attempt_keeps_the_record_and_its_owner() -> None:
    running = make_running("j1", offset=12)
    running.owner = "alice"
    again = next_attempt(running)
    assert again.job.data.attempt == running.job.data.attempt + 1
    assert (again.source, again.tp, again.offset, again.owner) == ("jobs", running.tp, 12, "alice")
    assert again.cancel is None


async def test_shutdown_waits_for_job_tasks_then_cuts_the_late_ones_short() -> None:
    inflight = InFlight()
    ended: list[str] = []

    async def job(name: str, seconds: float) -> None:
        await asyncio.sleep(seconds)
        ended.append(name)

    inflight.track(job("quick", 0.0))
    inflight.track(job("slow", 60.0))
    await inflight.finish(0.2)
    assert ended == ["quick"]
