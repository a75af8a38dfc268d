"""The event loop's lag, measured: how much later than asked a short sleep wakes up.

A loop busy with more streams than its CPU can carry runs every callback late; the
oversleep of a sleep says by how much, without any per-token work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def monitor_loop_lag(interval_s: float, on_sample: Callable[[float], None]) -> None:
    """Sleep `interval_s` again and again; hand each oversleep (seconds) to `on_sample`."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time()
        await asyncio.sleep(interval_s)
        on_sample(max(0.0, loop.time() - asked - interval_s))
