"""The running jobs' bookkeeping: which job holds a slot, and the tasks shutdown waits for."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from services.streamer.job import Running

log = logging.getLogger(__name__)


class InFlight:
    """Jobs in a slot by id (the cancel path looks them up) and every job task still alive."""

    def __init__(self) -> None:
        self.running: dict[str, Running] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def track(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a job's coroutine as a task that `finish` waits for within the grace period."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_crash)

    async def finish(self, grace_s: float) -> None:
        """Wait up to `grace_s` for the job tasks, then cut the late ones short."""
        if not self._tasks:
            return
        _, late = await asyncio.wait(self._tasks, timeout=grace_s)
        # Cut short: no final event and no commit, so another instance runs them again.
        for task in late:
            task.cancel()
        for task in late:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _log_crash(task: asyncio.Task[None]) -> None:
    """A job task's unexpected error is logged at once, not when the task is collected.

    Its offset stays uncommitted, so the job runs again after a restart or rebalance.
    """
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("a job task crashed: %r", exc, exc_info=exc)
