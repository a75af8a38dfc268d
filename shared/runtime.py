"""Process start-up shared by the services: run one service until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Protocol

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
