"""Who may cancel a job, and cancels that arrived before their job started (bounded, expiring)."""

from __future__ import annotations

from collections import OrderedDict

from shared.contracts import CancelJobData


def may_cancel(cancel: CancelJobData, owner_id: str) -> bool:
    """Only the job's owner or an admin may cancel it."""
    return cancel.admin or cancel.user_id == owner_id


class Owners:
    """The owner of each job id as the first RunJob seen for it said, most recent ids kept.

    A later record under the same job id that claims another owner (a replay, a forged
    retry) does not hand that user the right to cancel the job.
    """

    def __init__(self, *, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._owners: OrderedDict[str, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._owners)

    def get(self, job_id: str) -> str | None:
        return self._owners.get(job_id)

    def record(self, job_id: str, claimed: str) -> str:
        """The job's owner: the one first recorded for `job_id`, else `claimed` from now on."""
        owner = self._owners.get(job_id)
        if owner is None:
            owner = claimed
            self._owners[job_id] = owner
            if len(self._owners) > self.capacity:
                self._owners.popitem(last=False)
        else:
            self._owners.move_to_end(job_id)
        return owner


class PendingCancels:
    """Cancels of jobs not fetched yet, at most `capacity` in all, each for `ttl_s`.

    The bound counts cancels, not jobs: a flood of cancels under one job id (from many
    users) cannot grow memory either. Beyond it the oldest job's cancels go first.
    """

    def __init__(self, *, capacity: int = 10_000, ttl_s: float = 3600.0) -> None:
        self.capacity = capacity
        self.ttl_s = ttl_s
        # Per job: its expiry and its cancels, one per (user, admin), oldest first.
        self._items: OrderedDict[str, tuple[float, dict[tuple[str, bool], CancelJobData]]] = (
            OrderedDict()
        )
        self._count = 0

    def __len__(self) -> int:
        """Cancels remembered (not jobs)."""
        return self._count

    def remember(self, job_id: str, cancel: CancelJobData, now: float) -> int:
        """Remember a cancel; returns how many older cancels were evicted to stay bounded."""
        self._expire(now)
        # Several cancels may come (a stranger's, then the owner's): keep each distinct one.
        _, cancels = self._items.pop(job_id, (now, {}))
        who = (cancel.user_id, cancel.admin)
        if who not in cancels:
            cancels[who] = cancel
            self._count += 1
        self._items[job_id] = (now + self.ttl_s, cancels)
        evicted = 0
        while self._count > self.capacity:
            oldest_id, (_, oldest) = next(iter(self._items.items()))
            del oldest[next(iter(oldest))]
            self._count -= 1
            evicted += 1
            if not oldest:
                del self._items[oldest_id]
        return evicted

    def take(self, job_id: str, owner_id: str, now: float) -> CancelJobData | None:
        """The first remembered cancel this job's owner would obey, consumed with the rest."""
        self._expire(now)
        entry = self._items.get(job_id)
        if entry is None:
            return None
        for cancel in entry[1].values():
            if may_cancel(cancel, owner_id):
                self._drop(job_id)
                return cancel
        return None

    def _drop(self, job_id: str) -> None:
        _, cancels = self._items.pop(job_id)
        self._count -= len(cancels)

    def _expire(self, now: float) -> None:
        while self._items:
            job_id, (expires, _) = next(iter(self._items.items()))
            if expires > now:
                break
            self._drop(job_id)
