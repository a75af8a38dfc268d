"""Process start-up shared by the services: run one service until SIGTERM or SIGINT.

A background loop that ends while its service is not stopping is never left dead in a
live process: it is logged with its name, the service's `/readyz` turns 503, and
`run_until_signal` stops the service and returns a non-zero exit code, so the process
supervisor restarts it. Offsets of unfinished work were not committed: nothing is lost.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from typing import Any, Protocol

log = logging.getLogger(__name__)

EXIT_LOOP_DIED = 70  # EX_SOFTWARE: an internal error, worth a restart


def tune_collector(young_threshold: int) -> None:
    """Collect the young generation every `young_threshold` allocations, and freeze what
    start-up allocated (modules, schemas, settings) out of every later collection.

    Python's default, 700, runs a young collection many times within one batch of records
    or one burst of frames, and each finds almost nothing to free: the services make few
    reference cycles. 0 keeps Python's thresholds.
    """
    gc.freeze()
    if young_threshold > 0:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(young_threshold, middle, old)


class Service(Protocol):
    """A service's composition root: `start()` brings it up, `stop()` (idempotent) drains it."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class BackgroundTasks:
    """A service's long-running loops: spawned at start-up, cancelled and awaited at stop."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._dead: list[str] = []
        self.died = asyncio.Event()

    def __bool__(self) -> bool:
        return bool(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str | None = None) -> None:
        """Run `coro` until stop; it is expected to run forever (named for logs and health)."""
        label = name or getattr(coro, "__qualname__", None) or repr(coro)
        task = asyncio.create_task(coro, name=label)
        task.add_done_callback(self._ended)
        self._tasks.append(task)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if self._stopping:
            return
        name = task.get_name()
        self._dead.append(name)
        if task.cancelled():
            log.error("background loop %s was cancelled while the service runs", name)
        elif (exc := task.exception()) is not None:
            log.error("background loop %s crashed", name, exc_info=exc)
        else:
            log.error("background loop %s returned while the service runs", name)
        self.died.set()

    @property
    def dead(self) -> list[str]:
        """Names of the loops that ended unexpectedly."""
        return list(self._dead)

    def healthy(self) -> bool:
        """For `/readyz`: False once any loop ended while the service was not stopping."""
        return not self._dead

    async def cancel(self) -> None:
        """Cancel every task and wait for each to end; a crash not yet reported is logged."""
        self._stopping = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for task, outcome in zip(tasks, outcomes, strict=True):
            if isinstance(outcome, Exception) and task.get_name() not in self._dead:
                log.error("background loop %s had failed: %r", task.get_name(), outcome)


async def run_until_signal(
    service: Service, name: str, *, loops: BackgroundTasks | None = None
) -> int:
    """Run `service` until SIGTERM/SIGINT (exit code 0) or until one of `loops` dies (non-zero)."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await service.start()
    log.info("%s started", name)
    waits = [asyncio.create_task(stopping.wait())]
    if loops is not None:
        waits.append(asyncio.create_task(loops.died.wait()))
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()
        died = loops is not None and loops.died.is_set()
        if died:
            assert loops is not None
            log.error("%s stopping: background loop(s) %s ended", name, ", ".join(loops.dead))
        else:
            log.info("%s stopping", name)
        await service.stop()
        log.info("%s stopped", name)
    return EXIT_LOOP_DIED if died else 0


async def start_or_unwind(stack: AsyncExitStack, start: Callable[[], Awaitable[None]]) -> None:
    """Run `start`; if it fails, stop what it had started, in reverse order, and re-raise."""
    try:
        await start()
    except BaseException:
        await stack.aclose()
        raise
