"""Priority job slots: the next job comes from the highest band waiting, aging the rest."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Waiting(Generic[T]):
    item: T
    rank: int  # 0 = most urgent band
    since: float  # monotonic time it entered the queue


class Scheduler(Generic[T]):
    """A bounded number of slots fed from one FIFO per band.

    A job counts one band higher per `aging_s` waited, with no floor at the top
    band: a low job that has waited 4 x `aging_s` longer than the head of the
    urgent queue goes first, so no band starves under a steady urgent backlog.
    """

    def __init__(self, slots: int, *, bands: int = 4, aging_s: float = 30.0) -> None:
        if slots < 1:
            raise ValueError("slots must be >= 1")
        self.slots = slots
        self.aging_s = aging_s
        self._queues: list[deque[Waiting[T]]] = [deque() for _ in range(bands)]
        self.in_use = 0

    @property
    def free_slots(self) -> int:
        return self.slots - self.in_use

    def waiting(self, rank: int | None = None) -> int:
        if rank is None:
            return sum(len(q) for q in self._queues)
        return len(self._queues[rank])

    def offer(self, item: T, rank: int, now: float) -> None:
        self._queues[rank].append(Waiting(item, rank, now))

    def offer_first(self, item: T, rank: int, since: float) -> None:
        """Queue `item` ahead of its band, waiting `since`: one that held a slot (preempted)."""
        self._queues[rank].appendleft(Waiting(item, rank, since))

    def _effective_rank(self, waiting: Waiting[T], now: float) -> int:
        if self.aging_s <= 0:
            return waiting.rank
        return waiting.rank - int((now - waiting.since) // self.aging_s)

    def _best(self, now: float) -> deque[Waiting[T]] | None:
        best: deque[Waiting[T]] | None = None
        best_key: tuple[int, int] | None = None
        for queue in self._queues:
            if not queue:
                continue
            head = queue[0]
            # Ties go to the band that was higher to begin with.
            key = (self._effective_rank(head, now), head.rank)
            if best_key is None or key < best_key:
                best, best_key = queue, key
        return best

    def peek(self, now: float) -> Waiting[T] | None:
        """The job `take` would hand out next, slots aside; it stays queued."""
        best = self._best(now)
        return best[0] if best is not None else None

    def lowest_waiting(self) -> int | None:
        """The least urgent band with a job waiting."""
        return max((rank for rank, queue in enumerate(self._queues) if queue), default=None)

    def take(self, now: float) -> Waiting[T] | None:
        """Claim a slot for the best waiting job, or None when no slot or no job."""
        if self.in_use >= self.slots:
            return None
        best = self._best(now)
        if best is None:
            return None
        self.in_use += 1
        return best.popleft()

    def release(self) -> None:
        """Give back a slot claimed by `take`."""
        if self.in_use <= 0:
            raise RuntimeError("release without take")
        self.in_use -= 1

    def drop(self, predicate: Callable[[T], bool]) -> list[T]:
        """Remove and return waiting jobs matching `predicate` (e.g. of revoked partitions)."""
        dropped: list[T] = []
        for queue in self._queues:
            kept = [w for w in queue if not predicate(w.item)]
            dropped.extend(w.item for w in queue if predicate(w.item))
            queue.clear()
            queue.extend(kept)
        return dropped
