"""The jobs held here: made on their first record, capped, evicted `ttl_s` after they finished.

Also the final events held for their last chunks, released after
`final_wait_s` even if those chunks never come. A job older than the replayed
history is made from the owner index: its owner is fixed, its start is not here.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

from services.notifier.frames import Frame
from services.notifier.owners import OwnerIndex
from services.notifier.state import JobState
from shared.lifecycle import FINAL_STATUSES


class JobTable:
    def __init__(
        self,
        owners: OwnerIndex,
        *,
        max_jobs: int,
        ttl_s: float,
        final_wait_s: float,
        on_evict: Callable[[str], None],
    ) -> None:
        self.owners = owners
        self.max_jobs = max_jobs
        self.ttl_s = ttl_s
        self.final_wait_s = final_wait_s
        self._on_evict = on_evict  # what else goes with a forgotten job (its subscribers)
        self.states: OrderedDict[str, JobState] = OrderedDict()
        self._finished: deque[tuple[float, str]] = deque()
        self._held: set[str] = set()

    def state(self, job_id: str, now: float | None = None) -> JobState:
        """The job's state, made on first sight (the oldest job goes when the table is full)."""
        state = self.states.get(job_id)
        if state is None:
            if len(self.states) >= self.max_jobs:
                self._evict(next(iter(self.states)))
            state = self.states[job_id] = JobState(job_id)
            owner = self.owners.owner(job_id)
            if owner is not None:
                # Known from before the replayed history: its owner is fixed, its start is not here.
                state.owner, state.partial = owner, True
                ended = self.owners.status(job_id)
                if ended is not None:
                    state.status = ended
                    state.finished_at = now if now is not None else time.monotonic()
                    self._finished.append((state.finished_at, job_id))
        return state

    def known(self, job_id: str, now: float) -> JobState | None:
        """The job if read here, or known by its owner only (older than the history); else None."""
        state = self.states.get(job_id)
        if state is None and self.owners.owner(job_id) is not None:
            state = self.state(job_id, now)
        return state

    def finished(self, job_id: str) -> bool:
        state = self.states.get(job_id)
        return state is not None and state.status in FINAL_STATUSES

    def hold(self, job_id: str) -> None:
        """The job's final event waits for its last chunks."""
        self._held.add(job_id)

    def ended(self, job_id: str, now: float) -> None:
        """The job's final event went out: it is evicted `ttl_s` from now."""
        self._held.discard(job_id)
        self._finished.append((now, job_id))

    def overdue_finals(self, now: float) -> list[tuple[JobState, Frame]]:
        """Release the final events that waited `final_wait_s` for chunks that did not come."""
        released = []
        for job_id in list(self._held):
            state = self.states.get(job_id)
            if state is None or state.held is None:
                self._held.discard(job_id)
            elif now - state.held_since >= self.final_wait_s:
                frame = state.release_held(now)
                if frame is not None:
                    released.append((state, frame))
        return released

    def evict_expired(self, now: float) -> None:
        while self._finished and self._finished[0][0] + self.ttl_s <= now:
            _, job_id = self._finished.popleft()
            state = self.states.get(job_id)
            done_at = state.finished_at if state is not None else None
            if done_at is not None and done_at + self.ttl_s <= now:
                self._evict(job_id)

    def _evict(self, job_id: str) -> None:
        self.states.pop(job_id, None)
        self._held.discard(job_id)
        self._on_evict(job_id)
