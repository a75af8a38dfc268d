"""Every per-user limit of the gateway: submissions per minute and jobs in flight (counted
by the events view), cancels per minute, live streams held open.

Pure asyncio and arithmetic, no I/O: the handlers ask, and answer 429 or 503 from what
these say. Memory is bounded by the users active within the last window.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum

MINUTE_S = 60.0


class Limit(StrEnum):
    SUBMISSIONS_PER_MINUTE = "submissions-per-minute"
    JOBS_IN_FLIGHT = "jobs-in-flight"


@dataclass(frozen=True, slots=True)
class RateLimited:
    limit: Limit
    allowed: int
    retry_after_s: int


def submission_limit(
    in_flight: int,
    recent: deque[float],
    now: float,
    *,
    per_minute: int,
    max_in_flight: int,
    in_flight_retry_after_s: int,
) -> RateLimited | None:
    """Whether one more submission at `now` would exceed a limit (0 turns one off).

    `in_flight` and `recent` (submission times, oldest first) are the user's counts in the
    events view; times older than a minute are dropped from `recent` here.
    """
    if max_in_flight and in_flight >= max_in_flight:
        return RateLimited(Limit.JOBS_IN_FLIGHT, max_in_flight, in_flight_retry_after_s)
    if per_minute:
        while recent and recent[0] <= now - MINUTE_S:
            recent.popleft()
        if len(recent) >= per_minute:
            # The oldest of the last `per_minute` submissions leaves the window first.
            wait = recent[-per_minute] + MINUTE_S - now
            return RateLimited(Limit.SUBMISSIONS_PER_MINUTE, per_minute, max(1, math.ceil(wait)))
    return None


class PerMinute:
    """At most `allowed` events per user in any sliding minute; 0 = off."""

    def __init__(self, allowed: int, *, max_users: int = 100_000) -> None:
        self.allowed = allowed
        self.max_users = max_users
        self._times: dict[str, deque[float]] = {}

    def take(self, user_id: str, now: float) -> int | None:
        """Count one event at `now`; None when allowed, else seconds until one would be."""
        if not self.allowed:
            return None
        times = self._times.get(user_id)
        if times is None:
            if len(self._times) >= self.max_users:
                self._sweep(now)
            times = self._times[user_id] = deque(maxlen=self.allowed)
        while times and times[0] <= now - MINUTE_S:
            times.popleft()
        if len(times) >= self.allowed:
            return max(1, math.ceil(times[0] + MINUTE_S - now))
        times.append(now)
        return None

    def _sweep(self, now: float) -> None:
        # Users with nothing in the last minute hold no state worth keeping.
        for user_id in [u for u, t in self._times.items() if not t or t[-1] <= now - MINUTE_S]:
            del self._times[user_id]


class StreamsRefused(Exception):
    """A live stream not opened: the user holds too many, or every slot stayed busy."""

    retriable = True

    def __init__(self, reason: str, retry_after_s: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class StreamSlots:
    """At most `capacity` streams open, `per_user` of them per user; a wait is bounded."""

    PER_USER = "per-user"
    BUSY = "busy"

    def __init__(self, *, capacity: int, per_user: int, wait_s: float) -> None:
        self.capacity = capacity
        self.per_user = per_user
        self.wait_s = wait_s
        self._free = asyncio.Semaphore(capacity)
        self._held: dict[str, int] = {}
        self.open = 0

    @asynccontextmanager
    async def hold(self, user_id: str) -> AsyncIterator[None]:
        held = self._held.get(user_id, 0)
        if held >= self.per_user:
            raise StreamsRefused(self.PER_USER, retry_after_s=5)
        # Counted while waiting too: one user's waiters cannot queue past their share.
        self._held[user_id] = held + 1
        try:
            try:
                async with asyncio.timeout(self.wait_s):
                    await self._free.acquire()
            except TimeoutError:
                raise StreamsRefused(self.BUSY, retry_after_s=1) from None
            self.open += 1
            try:
                yield
            finally:
                self.open -= 1
                self._free.release()
        finally:
            left = self._held[user_id] - 1
            if left:
                self._held[user_id] = left
            else:
                del self._held[user_id]
