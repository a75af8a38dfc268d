"""Test helpers: waiting on conditions with a clear timeout, reading topics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

from aiokafka import AIOKafkaConsumer

T = TypeVar("T")


@overload
async def wait_for(
    probe: Callable[[], Awaitable[T]], *, timeout: float = ..., message: str, interval: float = ...
) -> T: ...


@overload
async def wait_for(
    probe: Callable[[], T], *, timeout: float = ..., message: str, interval: float = ...
) -> T: ...


async def wait_for(
    probe: Callable[[], Awaitable[T]] | Callable[[], T],
    *,
    timeout: float = 20.0,
    message: str,
    interval: float = 0.05,
) -> T:
    """Poll `probe` until it returns something truthy; fail with `message` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]  # awaited above when it was a coroutine
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s: {message}")
        await asyncio.sleep(interval)


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[bytes]], bool],
    timeout: float = 20.0,
) -> list[bytes]:
    """Read `topic` from the beginning until `until(values)` holds; values in partition order.

    A group-less subscription lets aiokafka find every partition itself, also of a
    topic created after this client's first metadata request.
    """
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        values: list[bytes] = []
        deadline = time.monotonic() + timeout
        while not until(values):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s reading {topic}: {len(values)} records"
                )
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                values.extend(r.value for r in records if r.value is not None)
        return values
    finally:
        await consumer.stop()
