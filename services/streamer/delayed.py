"""Retries fetched before their time: held by due time until the dispatch loop may offer them."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator

from services.streamer.job import Running


class DelayedRetries:
    """A heap of (due, n, job, band): the earliest due first, ties in arrival order."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Running, int]] = []
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def hold(self, running: Running, rank: int) -> None:
        heapq.heappush(self._heap, (running.due, next(self._counter), running, rank))

    def next_due(self) -> float | None:
        """The monotonic time the earliest retry falls due, or None when none waits."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> Iterator[tuple[Running, int]]:
        """Take every retry due by `now`, each with its band, earliest first."""
        while self._heap and self._heap[0][0] <= now:
            _, _, running, rank = heapq.heappop(self._heap)
            yield running, rank

    def drop(self, predicate: Callable[[Running], bool]) -> list[Running]:
        """Remove and return the retries matching `predicate`."""
        dropped = [d[2] for d in self._heap if predicate(d[2])]
        if dropped:
            self._heap = [d for d in self._heap if not predicate(d[2])]
            heapq.heapify(self._heap)
        return dropped
