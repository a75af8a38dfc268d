"""Process start-up shared by the services: run one service until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Service(Protocol):
    """A service's composition root: `start()` brings it up, `stop()` (idempotent) drains it."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def run_until_signal(service: Service, name: str) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await service.start()
    log.info("%s started", name)
    try:
        await stopping.wait()
        log.info("%s stopping", name)
    finally:
        await service.stop()
        log.info("%s stopped", name)


class BackgroundTasks:
    """A service's long-running loops: spawned at start-up, cancelled and awaited at stop."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def __bool__(self) -> bool:
        return bool(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(coro))

    async def cancel(self) -> None:
        """Cancel every task and wait for each to end; a task that had crashed is logged."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.error("a background task had failed: %r", outcome)


async def start_or_unwind(stack: AsyncExitStack, start: Callable[[], Awaitable[None]]) -> None:
    """Run `start`; if it fails, stop what it had started, in reverse order, and re-raise."""
    try:
        await start()
    except BaseException:
        await stack.aclose()
        raise
