"""Admission by capacity: the loop lag window, its hysteresis, and what an overloaded
streamer still starts (alone, then through the dispatch loop over fakes)."""

from __future__ import annotations

import asyncio
import random

import pytest

from services.streamer.capacity import Capacity, nearest_rank
from services.streamer.looplag import monitor_loop_lag
from shared.topics import Priority
from tests.support import wait_for
from tests.unit.streamer_fakes import make_running, streamer

URGENT, NORMAL = Priority.URGENT.rank, Priority.NORMAL.rank


def capacity() -> Capacity:
    return Capacity(max_lag_s=0.05, resume_lag_s=0.025, window_s=1.0)


def test_nearest_rank_p99_of_a_hundred_samples_is_the_second_largest() -> None:
    values = [float(i) for i in range(1, 101)]
    assert nearest_rank(values, 0.99) == 99.0
    assert nearest_rank([3.0], 0.99) == 3.0


def test_a_lag_spike_past_the_bound_overloads_and_the_window_must_recover_first() -> None:
    c = capacity()
    assert not c.observe(0.0, 0.01, in_use=3)
    assert c.observe(0.1, 0.2, in_use=3), "one sample past the bound in the window"
    assert c.overloaded and c.ceiling == 3
    # Back under the bound but the spike is still in the window: still overloaded.
    assert not c.observe(0.5, 0.001, in_use=3)
    assert c.overloaded
    assert c.observe(1.2, 0.001, in_use=2), "the spike left the window"
    assert not c.overloaded


def test_a_loop_calm_for_the_recovery_time_takes_jobs_before_its_spikes_leave_the_window() -> None:
    c = Capacity(max_lag_s=0.05, resume_lag_s=0.025, window_s=1.0, recover_s=0.2)
    for t in range(10):
        c.observe(t * 0.01, 0.001, in_use=2)
    c.observe(0.10, 0.3, in_use=2)  # two spikes: the window's p99 is over the bound
    c.observe(0.11, 0.001, in_use=2)
    c.observe(0.12, 0.3, in_use=2)
    assert c.overloaded
    for t in range(13, 32):  # calm from 0.13 s, but not yet for 0.2 s
        assert not c.observe(t * 0.01, 0.001, in_use=2)
    assert c.overloaded, "calm for less than the recovery time"
    assert c.observe(0.33, 0.001, in_use=2), "calm for 0.2 s: taking jobs again"
    assert not c.overloaded
    assert c.p99() == 0.001, "the spikes before the calm stretch are forgotten"
    assert not c.observe(0.34, 0.02, in_use=2), "and do not overload it again"


def test_a_loop_that_lags_in_every_turn_stays_overloaded_past_the_recovery_time() -> None:
    c = Capacity(max_lag_s=0.05, resume_lag_s=0.025, window_s=1.0, recover_s=0.2)
    for t in range(300):
        # Mostly calm turns, but one over the resume bound every 150 ms: never calm for 0.2 s.
        c.observe(t * 0.01, 0.2 if t % 15 == 0 else 0.001, in_use=1)
    assert c.overloaded


def test_lag_between_the_resume_and_the_overload_bounds_changes_nothing() -> None:
    c = capacity()
    for t in range(10):
        c.observe(t * 0.1, 0.04, in_use=1)
    assert not c.overloaded, "under the bound: still taking jobs"
    c.observe(1.0, 0.3, in_use=1)
    assert c.overloaded
    for t in range(11, 40):
        c.observe(t * 0.1, 0.04, in_use=1)
    assert c.overloaded, "over the resume bound: still overloaded"
    for t in range(40, 52):
        c.observe(t * 0.1, 0.02, in_use=1)
    assert not c.overloaded


def test_an_overloaded_streamer_starts_only_urgent_jobs_into_slots_freed_since() -> None:
    c = capacity()
    c.observe(0.0, 1.0, in_use=4)
    assert not c.admits(NORMAL, in_use=0)
    assert not c.admits(URGENT, in_use=4), "the load does not grow"
    assert c.admits(URGENT, in_use=3), "an urgent job replaces one that finished"


def test_a_zero_bound_turns_admission_by_capacity_off() -> None:
    c = Capacity(max_lag_s=0.0, resume_lag_s=0.0, window_s=1.0)
    assert not c.observe(0.0, 10.0, in_use=1)
    assert c.admits(NORMAL, in_use=100)


async def test_the_monitor_reports_how_long_a_blocked_loop_overslept() -> None:
    samples: list[float] = []
    task = asyncio.create_task(monitor_loop_lag(0.005, samples.append))
    await wait_for(lambda: samples, message="a first sample")
    loop = asyncio.get_running_loop()
    # A callback that keeps the loop busy for 0.1 s, as a CPU-bound stream would.
    loop.call_soon(_busy, 0.1)
    try:
        await wait_for(lambda: max(samples) >= 0.09, message="the blocked turn was measured")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def _busy(seconds: float) -> None:
    loop_time = asyncio.get_running_loop().time
    end = loop_time() + seconds
    while loop_time() < end:
        pass


async def test_an_overloaded_dispatcher_starts_nothing_but_an_urgent_job_in_a_freed_slot() -> None:
    async with streamer(slots=3, max_lag_s=0.05) as s:
        s.dispatcher.admit(make_running("running", offset=0), NORMAL)
        await wait_for(lambda: s.upstream.attempts, message="the first job started")
        s.dispatcher.loop_lag(0.5)
        assert s.metric("streamjobs_streamer_overloaded") == 1
        assert s.dispatcher.holds_back(NORMAL), "what cannot start stays in Kafka"
        assert s.dispatcher.holds_back(URGENT), "no slot freed since the overload began"
        s.dispatcher.admit(make_running("normal", offset=1), NORMAL)
        s.dispatcher.admit(make_running("urgent", offset=2, priority=Priority.URGENT), URGENT)
        s.upstream.finish("running")
        await wait_for(lambda: len(s.upstream.attempts) == 2, message="a job took the slot")
        assert s.upstream.started_ids() == ["running", "urgent"]
        assert s.dispatcher.scheduler.waiting(NORMAL) == 1, "the normal job still waits"
        assert s.metric("streamjobs_streamer_loop_lag_seconds_count") == 1


async def test_a_dispatcher_that_caught_up_takes_the_waiting_jobs_again() -> None:
    async with streamer(slots=2, max_lag_s=0.05, window_s=0.05) as s:
        s.dispatcher.loop_lag(0.5)
        s.dispatcher.admit(make_running("a", offset=0), NORMAL)
        s.dispatcher.admit(make_running("b", offset=1), NORMAL)
        assert s.dispatcher.scheduler.waiting(NORMAL) == 2

        def caught_up() -> bool:
            s.dispatcher.loop_lag(0.0)  # a sample from a loop that keeps up
            return not s.dispatcher.capacity.overloaded

        await wait_for(caught_up, message="the spike left the window")
        assert s.metric("streamjobs_streamer_overloaded") == 0
        await wait_for(lambda: len(s.upstream.attempts) == 2, message="both jobs started")
        assert not s.dispatcher.holds_back(NORMAL)


def test_the_overload_decision_follows_the_window_p99_exactly() -> None:
    c = capacity()
    rng = random.Random(7)
    changes = 0
    for i in range(2000):
        # Calm stretches with rare spikes, and busy stretches.
        busy = (i // 250) % 2 == 1
        lag = rng.uniform(0, 0.08) if busy else rng.choice([0.001] * 150 + [0.03, 0.06])
        was = c.overloaded
        changes += c.observe(i * 0.01, lag, in_use=0)
        bound = c.resume_lag_s if was else c.max_lag_s
        assert c.overloaded == (c.p99() > bound), f"sample {i}"
    assert changes >= 4, "both ways, more than once"
