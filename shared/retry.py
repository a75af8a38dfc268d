"""Retrying an operation that must succeed in the end (a publish, a broker probe) with backoff."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


async def retry_until_done(
    attempt: Callable[[], Awaitable[T]],
    errors: tuple[type[BaseException], ...],
    *,
    what: str,
    first_delay_s: float = 0.2,
    max_delay_s: float = 10.0,
    log_extra: Mapping[str, object] | None = None,
) -> T:
    """Await `attempt()` until it returns; after each of `errors`, sleep with capped backoff.

    Cancellation (a shutdown) ends the retries.
    """
    delay = first_delay_s
    while True:
        try:
            return await attempt()
        except errors as exc:
            log.warning("%s failed (%r); retry in %.1fs", what, exc, delay, extra=log_extra)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay_s)
