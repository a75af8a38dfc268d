"""The running jobs' bookkeeping: which job holds a slot, and the tasks shutdown waits for."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Coroutine
from typing import Any

from aiokafka import TopicPartition

from services.streamer.job import Running

log = logging.getLogger(__name__)


class InFlight:
    """Jobs in a slot by id (the cancel path looks them up) and every job task still alive."""

    def __init__(self) -> None:
        self.running: dict[str, Running] = {}
        self._tasks: dict[asyncio.Task[None], Running | None] = {}

    def track(self, coro: Coroutine[Any, Any, None], running: Running | None = None) -> None:
        """Run a job's coroutine as a task that `finish` waits for within the grace period.

        With its `running` job, a rebalance may cut the task short (`cut_short`).
        """
        task = asyncio.create_task(coro)
        self._tasks[task] = running
        task.add_done_callback(self._forget)
        task.add_done_callback(_log_crash)

    def partitions(self, source: str) -> set[TopicPartition]:
        """The partitions of `source` whose jobs have a task alive here."""
        return {
            running.tp
            for running in self._tasks.values()
            if running is not None and running.tp is not None and running.source == source
        }

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    async def cut_short(self, lost: Callable[[Running], bool]) -> int:
        """Cancel and await the tasks of the jobs `lost` picks; how many there were.

        Cut short like a late job at shutdown: no final event and no commit, so whoever
        owns the record next runs it again as the next attempt.
        """
        # A task created just now has not run yet: cancelled so, its `finally` would never
        # release its slot. One turn of the loop lets every such task reach its first await.
        await asyncio.sleep(0)
        tasks = [
            task for task, running in self._tasks.items() if running is not None and lost(running)
        ]
        await _cancel_all(tasks)
        return len(tasks)

    async def finish(self, grace_s: float) -> None:
        """Wait up to `grace_s` for the job tasks, then cut the late ones short."""
        if not self._tasks:
            return
        _, late = await asyncio.wait(list(self._tasks), timeout=grace_s)
        # Cut short: no final event and no commit, so another instance runs them again.
        await _cancel_all(late)


async def _cancel_all(tasks: Collection[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _log_crash(task: asyncio.Task[None]) -> None:
    """A job task's unexpected error is logged at once, not when the task is collected.

    Its offset stays uncommitted, so the job runs again after a restart or rebalance.
    """
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("a job task crashed: %r", exc, exc_info=exc)
