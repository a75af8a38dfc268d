"""Who owns each job, for every job on the events topic, not only those within the lookback window.

Chunk history is replayed for a window only, but lifecycle events are few, so
the notifier reads the whole events topic on start and keeps, per job, its
owner (fixed by the first `job.accepted`) and its final status. An owner can
then still subscribe to a job older than the window after a restart and be
told where to find it. Bounded: past `max_jobs` the oldest entries go.
"""

from __future__ import annotations

import sys
from collections import OrderedDict

# job id → (owner, final status or "" while the job has not ended)
_Entry = tuple[str, str]


class OwnerIndex:
    def __init__(self, max_jobs: int) -> None:
        self.max_jobs = max_jobs
        self._jobs: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._jobs)

    def accepted(self, job_id: str, user_id: str) -> str:
        """Record a job's owner; the first one stays. Returns the owner in force."""
        entry = self._jobs.get(job_id)
        if entry is not None:
            return entry[0]
        if len(self._jobs) >= self.max_jobs:
            self._jobs.popitem(last=False)
        # Interned: a user's many jobs share one string object.
        self._jobs[job_id] = (sys.intern(user_id), "")
        return user_id

    def ended(self, job_id: str, status: str) -> None:
        """Record a job's final status (its first one: a final event does not change)."""
        entry = self._jobs.get(job_id)
        if entry is not None and not entry[1]:
            self._jobs[job_id] = (entry[0], status)

    def owner(self, job_id: str) -> str | None:
        entry = self._jobs.get(job_id)
        return entry[0] if entry is not None else None

    def status(self, job_id: str) -> str | None:
        """The final status, or None when the job has not ended (or is unknown)."""
        entry = self._jobs.get(job_id)
        return entry[1] or None if entry is not None else None
