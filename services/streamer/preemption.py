"""Which running job an urgent job waiting for a slot stops: the youngest of the lowest band.

When every slot is busy and an urgent job waits, the dispatcher stops one running job of a
preemptible band per waiting urgent job. The stopped attempt ends retrying (reason
`preempted`, billed for what it streamed), and the job waits in this streamer's queue,
first of its band, to run again as its next attempt, continuing its answer where the model
allows (`on_interrupt`). The youngest goes first, so the least streamed work is redone. A
job is preempted once at most, and never on its last allowed attempt: preemption alone
never fails a job or keeps it from finishing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from services.streamer.job import Running
from shared.topics import Priority

PREEMPTED_REASON = "preempted: an urgent job needed the slot"


@dataclass(frozen=True, slots=True)
class Preemption:
    """The bands an urgent job may stop (`from_rank` and below), and the attempt limit."""

    from_rank: int
    max_attempts: int

    @classmethod
    def of(cls, band: str, max_attempts: int) -> Preemption | None:
        """From the setting: a band name, or "off"."""
        if band == "off":
            return None
        return cls(Priority(band).rank, max_attempts)

    def may_stop(self, running: Running) -> bool:
        data = running.job.data
        return (
            data.priority.rank >= self.from_rank
            and running.cancel is None
            and not running.preempted
            and not running.was_preempted
            # An attempt under way: one still before its upstream request has nothing to stop.
            and running.reader is not None
            and not running.reader.done()
            and data.attempt < self.max_attempts
        )

    def pick(self, running: Iterable[Running], wanted: int) -> list[Running]:
        """Up to `wanted` jobs to stop: lowest band first, then the latest given its slot."""
        if wanted <= 0:
            return []
        candidates = [r for r in running if self.may_stop(r)]
        candidates.sort(key=lambda r: (r.job.data.priority.rank, r.launched), reverse=True)
        return candidates[:wanted]
