"""Admission by capacity: new jobs start only while the event loop keeps up (no I/O here).

Slots are a ceiling, not a promise: a streamer whose loop lags has no CPU for another
stream, and a job it does not start stays uncommitted in Kafka for it (or the partition's
next owner) to run once there is room.
"""

from __future__ import annotations

import math
from collections import deque

URGENT_RANK = 0


def nearest_rank(values: list[float], quantile: float) -> float:
    """The nearest-rank quantile of `values` (not empty)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(quantile * len(ordered)) - 1)]


class Capacity:
    """Overloaded while the p99 loop lag of the last `window_s` exceeds `max_lag_s`.

    Hysteresis: once overloaded it stays so until the window's p99 is back at or under
    `resume_lag_s`, or until every sample of the last `recover_s` was (None: the window's
    length), so admission does not flap on every sample. A loop that is truly behind lags
    in every sample; one that hiccuped twice (a burst of jobs starting, a busy box) and
    keeps up again need not wait for the spikes to leave the whole window: the samples
    before its calm stretch are forgotten, and the window starts again. While overloaded only
    urgent jobs start, and only into slots that freed since the overload began: the load
    does not grow, and an urgent job never waits for the whole backlog to drain.
    `max_lag_s` 0 turns admission by capacity off.
    """

    def __init__(
        self,
        max_lag_s: float,
        resume_lag_s: float,
        window_s: float,
        recover_s: float | None = None,
    ) -> None:
        self.max_lag_s = max_lag_s
        self.resume_lag_s = min(resume_lag_s, max_lag_s)
        self.window_s = window_s
        self.recover_s = window_s if recover_s is None else recover_s
        self._calm_since: float | None = None  # first sample of the run at or under resume
        self.overloaded = False
        self.ceiling = 0  # slots in use when the overload began
        self._samples: deque[tuple[float, float]] = deque()
        # Samples in the window over each bound: the p99 is over a bound exactly when more
        # than 1% of them are, so no sample is sorted on the way.
        self._over_max = 0
        self._over_resume = 0

    def p99(self) -> float:
        """The p99 lag of the samples in the window (0 when there are none)."""
        if not self._samples:
            return 0.0
        return nearest_rank([lag for _, lag in self._samples], 0.99)

    def _p99_over(self, over: int) -> bool:
        # Nearest rank: the p99 is the k-th smallest of n, k = ceil(0.99 n); it is over a
        # bound when at least n - k + 1 samples are.
        n = len(self._samples)
        return over >= n - math.ceil(0.99 * n) + 1

    def observe(self, now: float, lag_s: float, in_use: int) -> bool:
        """Add one lag sample taken at `now`; whether the overloaded state changed."""
        if self.max_lag_s <= 0:
            return False
        samples = self._samples
        samples.append((now, lag_s))
        self._over_max += lag_s > self.max_lag_s
        self._over_resume += lag_s > self.resume_lag_s
        if lag_s > self.resume_lag_s:
            self._calm_since = None
        elif self._calm_since is None:
            self._calm_since = now
        self._forget_before(now - self.window_s)
        if not self.overloaded:
            if self._p99_over(self._over_max):
                self.overloaded, self.ceiling = True, in_use
                return True
            return False
        if not self._p99_over(self._over_resume):
            self.overloaded = False
            return True
        calm = self._calm_since
        if calm is not None and now - calm >= self.recover_s:
            self._forget_before(calm)
            self.overloaded = False
            return True
        return False

    def _forget_before(self, moment: float) -> None:
        samples = self._samples
        while samples and samples[0][0] < moment:
            _, old = samples.popleft()
            self._over_max -= old > self.max_lag_s
            self._over_resume -= old > self.resume_lag_s

    def admits(self, rank: int, in_use: int) -> bool:
        """Whether a job of band `rank` may take a free slot now, with `in_use` slots busy."""
        if not self.overloaded:
            return True
        return rank == URGENT_RANK and in_use < self.ceiling
