"""Per-partition commit tracking: commit an offset only when it and all before it are final."""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)


class OffsetTracker(Generic[P]):
    """Records are tracked in fetch order per partition; they may finish in any order.

    `committable()` gives, per partition that advanced, the next offset to commit
    (Kafka's convention: last finished contiguous offset + 1).
    """

    def __init__(self) -> None:
        self._inflight: dict[P, deque[int]] = {}
        self._done: dict[P, set[int]] = {}
        self._next: dict[P, int] = {}  # the commit point reached, not yet handed out
        self._committed: dict[P, int] = {}
        self._fetched: dict[P, int] = {}  # one past the last record tracked

    def track(self, partition: P, offset: int) -> None:
        queue = self._inflight.setdefault(partition, deque())
        if queue and offset <= queue[-1]:
            return  # a re-fetch of a record already tracked
        queue.append(offset)
        self._fetched[partition] = max(self._fetched.get(partition, 0), offset + 1)
        self._done.setdefault(partition, set())

    def done(self, partition: P, offset: int) -> None:
        queue = self._inflight.get(partition)
        if queue is None:
            return  # partition forgotten (revoked) meanwhile
        done = self._done[partition]
        done.add(offset)
        while queue and queue[0] in done:
            finished = queue.popleft()
            done.discard(finished)
            self._next[partition] = finished + 1

    def position(self, partition: P) -> int | None:
        """Where a consumer of this partition would have to restart now, if known."""
        queue = self._inflight.get(partition)
        if queue:
            return queue[0]
        return self._next.get(partition, self._committed.get(partition))

    def fetched(self, partition: P) -> int | None:
        """The offset after the last record tracked: where a kept partition's fetch resumes."""
        return self._fetched.get(partition)

    def inflight(self, partition: P) -> int:
        return len(self._inflight.get(partition, ()))

    def committable(self) -> dict[P, int]:
        """Offsets to commit now; each is handed out once."""
        out = {p: n for p, n in self._next.items() if self._committed.get(p, -1) < n}
        self._committed.update(out)
        self._next.clear()
        return out

    def forget(self, partition: P) -> None:
        """Drop a partition (revoked); late completions for it are ignored."""
        self._inflight.pop(partition, None)
        self._done.pop(partition, None)
        self._next.pop(partition, None)
        self._committed.pop(partition, None)
        self._fetched.pop(partition, None)
