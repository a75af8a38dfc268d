"""Which job a cancel hits: one running, one waiting for a slot or a retry, or one not fetched.

A cancel for a job not fetched yet is remembered (cancels.py) and applied when it is; a job
cancelled before it started is skipped: its cancelled event goes out, then its offset.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from aiokafka.errors import KafkaError

from services.streamer.cancels import Owners, PendingCancels, may_cancel
from services.streamer.delayed import DelayedRetries
from services.streamer.inflight import InFlight
from services.streamer.job import Running
from services.streamer.metrics import StreamerMetrics
from services.streamer.ports import EventPublisher, OffsetLedger
from services.streamer.scheduler import Scheduler
from shared.contracts import CancelJobData
from shared.retry import retry_until_done

log = logging.getLogger(__name__)


class CancelMatching:
    def __init__(
        self,
        *,
        pending: PendingCancels,
        owners: Owners,
        inflight: InFlight,
        scheduler: Scheduler[Running],
        delayed: DelayedRetries,
        events: EventPublisher,
        ledgers: Mapping[str, OffsetLedger],
        metrics: StreamerMetrics,
        retry_delays_s: tuple[float, float],
    ) -> None:
        self.pending = pending
        self.owners = owners
        self.inflight = inflight
        self.scheduler = scheduler
        self.delayed = delayed
        self.events = events
        self.ledgers = ledgers
        self.metrics = metrics
        self.retry_delays_s = retry_delays_s

    def record_owner(self, running: Running) -> None:
        """Whose cancels count for a fetched job: the owner its first record named."""
        job = running.job
        running.owner = self.owners.record(job.job_id, job.data.user_id)
        if running.owner != job.data.user_id:
            log.warning(
                "job %s claims owner %s; its first record said %s, who alone may cancel it",
                job.job_id,
                job.data.user_id,
                running.owner,
            )

    def take(self, running: Running, now: float) -> CancelJobData | None:
        """A remembered cancel that this job's owner would obey, consumed."""
        pending = self.pending.take(running.job.job_id, running.owner, now)
        self.metrics.cancels_remembered.set(len(self.pending))
        return pending

    def on_cancel(self, job_id: str, cancel: CancelJobData) -> None:
        running = self.inflight.running.get(job_id)
        owner = running.owner if running is not None else self.owners.get(job_id)
        if owner is not None and not may_cancel(cancel, owner):
            self.metrics.cancels_ignored.inc()
            log.warning("ignored a cancel of job %s by user %s", job_id, cancel.user_id)
        elif running is not None:
            running.request_cancel(cancel)
        elif not self._cancel_waiting(job_id, cancel):
            # Not fetched yet (or owned by another instance): applied when it starts.
            evicted = self.pending.remember(job_id, cancel, time.monotonic())
            self.metrics.cancels_evicted.inc(evicted)
            self.metrics.cancels_remembered.set(len(self.pending))

    def _cancel_waiting(self, job_id: str, cancel: CancelJobData) -> bool:
        """Cancel a job fetched but waiting for a slot (or a retry) at once, without a slot."""

        def matches(r: Running) -> bool:
            return r.job.job_id == job_id and may_cancel(cancel, r.owner)

        dropped = self.scheduler.drop(matches)
        dropped.extend(self.delayed.drop(matches))
        for waiting in dropped:
            waiting.cancel = cancel
            self.skip(waiting)
        if dropped:
            self.metrics.jobs_waiting.set(self.scheduler.waiting())
        return bool(dropped)

    def skip(self, waiting: Running) -> None:
        """End a job cancelled before it started, as a job task of its own."""
        self.inflight.track(self._skip(waiting))

    async def _skip(self, waiting: Running) -> None:
        """Publish the cancelled event of a job that never started, then release its offset."""
        assert waiting.cancel is not None
        data = waiting.job.data
        cancel = waiting.cancel
        first_delay_s, max_delay_s = self.retry_delays_s
        # Retried until written: its offset stays uncommitted until the event is out.
        await retry_until_done(
            lambda: self.events.cancelled(waiting.job, cancel),
            (KafkaError,),
            what="publishing a cancel",
            first_delay_s=first_delay_s,
            max_delay_s=max_delay_s,
            log_extra={"job_id": waiting.job.job_id},
        )
        self.metrics.jobs_cancelled.labels(data.job_type, data.priority.value).inc()
        if waiting.tp is not None:
            self.ledgers[waiting.source].done(waiting.tp, waiting.offset)
