"""Cancels that arrived before their job started: remembered, bounded, with a time to live."""

from __future__ import annotations

from collections import OrderedDict

from shared.contracts import CancelJobData


def may_cancel(cancel: CancelJobData, owner_id: str) -> bool:
    """Only the job's owner or an admin may cancel it."""
    return cancel.admin or cancel.user_id == owner_id


class PendingCancels:
    def __init__(self, *, capacity: int = 10_000, ttl_s: float = 3600.0) -> None:
        self.capacity = capacity
        self.ttl_s = ttl_s
        self._items: OrderedDict[str, tuple[float, list[CancelJobData]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def remember(self, job_id: str, cancel: CancelJobData, now: float) -> None:
        self._expire(now)
        # Several cancels may come (a stranger's, then the owner's): keep them all.
        _, cancels = self._items.pop(job_id, (now, []))
        cancels.append(cancel)
        self._items[job_id] = (now + self.ttl_s, cancels)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def take(self, job_id: str, owner_id: str, now: float) -> CancelJobData | None:
        """The first remembered cancel this job's owner would obey, consumed."""
        self._expire(now)
        entry = self._items.get(job_id)
        if entry is None:
            return None
        for cancel in entry[1]:
            if may_cancel(cancel, owner_id):
                del self._items[job_id]
                return cancel
        return None

    def _expire(self, now: float) -> None:
        while self._items:
            job_id, (expires, _) = next(iter(self._items.items()))
            if expires > now:
                break
            del self._items[job_id]
