"""Background loops: one that ends while its service runs is reported, never left dead."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import AsyncIterator, Iterator

import pytest

from shared.runtime import EXIT_LOOP_DIED, BackgroundTasks, run_until_signal, tune_collector


async def forever() -> None:
    await asyncio.Event().wait()


async def crash() -> None:
    await asyncio.sleep(0)
    raise RuntimeError("boom")


async def give_up() -> None:
    await asyncio.sleep(0)


@pytest.fixture(autouse=True)
async def restore_signal_handlers() -> AsyncIterator[None]:
    yield
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)


class FakeService:
    def __init__(self, loops: BackgroundTasks, *spawn: str) -> None:
        self.background = loops
        self.spawn = spawn
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()

    async def start(self) -> None:
        self.started.set()
        self.background.spawn(forever(), name="healthy-loop")
        for name in self.spawn:
            self.background.spawn(crash() if name == "crash" else give_up(), name=name)

    async def stop(self) -> None:
        await self.background.cancel()
        self.stopped.set()


async def test_a_crashed_loop_is_logged_by_name_and_marks_the_tasks_unhealthy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loops = BackgroundTasks()
    loops.spawn(forever())
    loops.spawn(crash(), name="persist-loop")
    async with asyncio.timeout(5):
        await loops.died.wait()
    assert not loops.healthy()
    assert loops.dead == ["persist-loop"]
    assert any(
        "persist-loop" in r.getMessage() and r.exc_info and r.levelno == logging.ERROR
        for r in caplog.records
    )
    await loops.cancel()


async def test_a_loop_that_returns_counts_as_dead_and_is_named_after_its_coroutine() -> None:
    loops = BackgroundTasks()
    loops.spawn(give_up())
    async with asyncio.timeout(5):
        await loops.died.wait()
    assert loops.dead == ["give_up"]
    await loops.cancel()


async def test_loops_cancelled_at_stop_are_not_reported_as_dead(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loops = BackgroundTasks()
    loops.spawn(forever())
    loops.spawn(forever())
    await asyncio.sleep(0)
    await loops.cancel()
    assert loops.healthy()
    assert not loops.died.is_set()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_run_until_signal_stops_the_service_and_fails_when_a_loop_dies() -> None:
    loops = BackgroundTasks()
    service = FakeService(loops, "crash")
    async with asyncio.timeout(10):
        code = await run_until_signal(service, "fake", loops=loops)
    assert code == EXIT_LOOP_DIED != 0
    assert service.stopped.is_set()


async def test_run_until_signal_exits_zero_on_sigterm_with_healthy_loops() -> None:
    loops = BackgroundTasks()
    service = FakeService(loops)
    runner = asyncio.create_task(run_until_signal(service, "fake", loops=loops))
    async with asyncio.timeout(10):
        await service.started.wait()  # its signal handlers are installed before start
    os.kill(os.getpid(), signal.SIGTERM)
    async with asyncio.timeout(10):
        code = await runner
    assert code == 0
    assert service.stopped.is_set()
    assert loops.healthy()


@pytest.fixture
def collector() -> Iterator[None]:
    """Put the collector back as it was: the thresholds and nothing frozen."""
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_the_collector_runs_the_young_generation_at_the_threshold_and_freezes_start_up(
    collector: None,
) -> None:
    gc.set_threshold(700, 10, 10)
    gc.unfreeze()
    tune_collector(50_000)
    assert gc.get_threshold() == (50_000, 10, 10)
    assert gc.get_freeze_count() > 0  # what start-up allocated is out of every scan


def test_a_zero_threshold_keeps_pythons(collector: None) -> None:
    gc.set_threshold(700, 10, 10)
    tune_collector(0)
    assert gc.get_threshold() == (700, 10, 10)
