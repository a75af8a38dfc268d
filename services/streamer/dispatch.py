"""The dispatch loop: admission of fetched jobs, slots filled by band, each job run as a task.

Which band goes next is the scheduler's call (scheduler.py); whether the loop has room for
another stream is capacity.py's, and whether the higher bands are all fetched fence.py's.
This module feeds them, starts what they let through, stops a preemptible job for an urgent
one waiting (preemption.py), and ends each attempt's bookkeeping: slot, offset, or a rerun.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from services.streamer.cancel_matching import CancelMatching
from services.streamer.capacity import URGENT_RANK, Capacity
from services.streamer.delayed import DelayedRetries
from services.streamer.fence import PriorityFence, Verdict
from services.streamer.inflight import InFlight
from services.streamer.job import Outcome, Running
from services.streamer.metrics import StreamerMetrics
from services.streamer.ports import EventPublisher, OffsetLedger, RunAttempt
from services.streamer.preemption import Preemption
from services.streamer.reruns import Reruns
from services.streamer.scheduler import Scheduler
from services.streamer.upstream import InternalError

log = logging.getLogger(__name__)

RETRY_BAND = -1  # pseudo band of the retry topic's partitions, for pausing


class Dispatcher:
    def __init__(
        self,
        *,
        scheduler: Scheduler[Running],
        delayed: DelayedRetries,
        inflight: InFlight,
        cancels: CancelMatching,
        reruns: Reruns,
        run_attempt: RunAttempt,
        events: EventPublisher,
        ledgers: Mapping[str, OffsetLedger],
        metrics: StreamerMetrics,
        capacity: Capacity,
        fence: PriorityFence,
        preemption: Preemption | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.preemption = preemption
        self.capacity = capacity
        self.fence = fence
        self.delayed = delayed
        self.inflight = inflight
        self.cancels = cancels
        self.reruns = reruns
        self.run_attempt = run_attempt
        self.events = events
        self.ledgers = ledgers
        self.metrics = metrics
        self.accepting = True
        self._wake = asyncio.Event()
        fence.wake = self._wake.set

    def loop_lag(self, lag_s: float) -> None:
        """One loop lag sample: it may close admission, or open it again."""
        self.metrics.loop_lag.observe(lag_s)
        if self.capacity.observe(time.monotonic(), lag_s, self.scheduler.in_use):
            overloaded = self.capacity.overloaded
            self.metrics.overloaded.set(1 if overloaded else 0)
            log.warning(
                "loop lag p99 %.0f ms: %s",
                self.capacity.p99() * 1000,
                "overloaded, no new jobs but urgent ones" if overloaded else "taking jobs again",
            )
            self._wake.set()

    def holds_back(self, band: int) -> bool:
        """Whether the intake should leave `band`'s partitions in Kafka for now.

        What could not start anyway stays there (an overloaded loop), and so do lower bands
        while the fetch must bring a higher band's records first.
        """
        if band == RETRY_BAND:
            return False
        if not self.capacity.admits(band, self.scheduler.in_use):
            return True
        return self.fence.holds_back(band)

    def backlog(self, rank: int) -> int:
        """Jobs fetched and waiting in a band (the retry topic's: those not due yet)."""
        if rank == RETRY_BAND:
            return len(self.delayed)
        return self.scheduler.waiting(rank)

    def admit(self, running: Running, rank: int) -> None:
        """Take in a fetched job: skip it if cancelled already, else hold it or queue it."""
        now = time.monotonic()
        self.cancels.record_owner(running)
        pending = self.cancels.take(running, now)
        if pending is not None:
            # Cancelled before it was fetched: skip it now, without waiting for a slot.
            running.cancel = pending
            self.cancels.skip(running)
            return
        if running.due > now:
            self.delayed.hold(running, rank)
        else:
            self.scheduler.offer(running, rank, now)
        self.metrics.jobs_waiting.set(self.scheduler.waiting())
        self._wake.set()

    async def drop_revoked(self, revoked: set[TopicPartition]) -> None:
        """Forget the waiting jobs of revoked partitions and cut their running ones short.

        Returns once their tasks are gone, so that no attempt of them overlaps the one the
        partitions' next owner starts.
        """

        def lost(r: Running) -> bool:
            return r.tp in revoked

        self.scheduler.drop(lost)
        self.delayed.drop(lost)
        cut = await self.inflight.cut_short(lost)
        if cut:
            self.metrics.attempts_cut_by_rebalance.inc(cut)
            log.info("%d running jobs of revoked partitions cut short", cut)

    async def loop(self) -> None:
        while True:
            timeout = None
            due = self.delayed.next_due()
            if due is not None:
                timeout = max(0.0, due - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            now = time.monotonic()
            for running, rank in self.delayed.pop_due(now):
                self.scheduler.offer(running, rank, now)
            self._fill(now)
            self.metrics.slots_in_use.set(self.scheduler.in_use)
            self.metrics.jobs_waiting.set(self.scheduler.waiting())

    def _fill(self, now: float) -> None:
        """Start waiting jobs into free slots while capacity and the fence let them."""
        scheduler, fence = self.scheduler, self.fence
        while self.accepting and scheduler.free_slots > 0:
            head = scheduler.peek(now)
            if head is None or not self.capacity.admits(head.rank, scheduler.in_use):
                break
            if head.rank > URGENT_RANK:
                verdict = fence.verdict(head.rank)
                if verdict is Verdict.STALE:
                    # Ask for every band above the least urgent one waiting: one answer
                    # then serves all the lower jobs that fit the free slots.
                    lowest = scheduler.lowest_waiting()
                    fence.request(head.rank if lowest is None else lowest)
                    break
                if verdict is Verdict.UNSEEN:
                    self.metrics.fence_holds.inc()
                    fence.hold(head.rank)
                    break
            waiting = scheduler.take(now)
            if waiting is None:
                break
            self._launch(waiting.item, now, waiting.since)
        # Ends read before this pass describe Kafka as it was: the next pass asks again.
        fence.spend()
        self._preempt()

    def _preempt(self) -> None:
        """Stop one preemptible job per urgent job waiting for a slot, beyond those stopping."""
        preemption, scheduler = self.preemption, self.scheduler
        if preemption is None or not self.accepting or scheduler.free_slots > 0:
            return
        urgent = scheduler.waiting(URGENT_RANK)
        # Overloaded, an urgent job takes a freed slot only under the ceiling.
        if not urgent or not self.capacity.admits(URGENT_RANK, scheduler.in_use - 1):
            return
        running = self.inflight.running.values()
        stopping = sum(r.preempted for r in running)
        for chosen in preemption.pick(running, urgent - stopping):
            chosen.request_preempt()

    def _launch(self, running: Running, now: float, queued_since: float) -> None:
        job = running.job
        running.slot_at = datetime.now(UTC)
        pending = self.cancels.take(running, now)
        if pending is not None:
            running.cancel = pending
        running.launched, running.queued_since = now, queued_since
        self.inflight.running[job.job_id] = running
        if running.tp is not None and running.cancel is None:
            self.ledgers[running.source].started(
                running.tp, running.offset, job.job_id, job.data.attempt
            )
        self.inflight.track(self._run(running), running)

    async def _run(self, running: Running) -> None:
        job = running.job
        lost = False
        outcome: object = None
        try:
            try:
                outcome = await self.run_attempt(running)
            except KafkaError:
                raise
            except Exception as exc:  # a process boundary: one job's bug must not stop us
                # running.job: the attempt that crashed, later than the first after a fallback.
                log.exception("attempt %d crashed", running.job.data.attempt)
                streamed = running.stream.streamed() if running.stream is not None else None
                await self.events.crashed(running.job, InternalError(repr(exc)), streamed)
        except asyncio.CancelledError:
            raise  # shutdown: neither final event nor commit
        except KafkaError as exc:
            # Kafka failed under the attempt: nothing final was said, so the offset stays
            # in flight and the job runs again here, as the next attempt, once Kafka answers.
            log.warning("attempt %d lost to Kafka (%r); it runs again", job.data.attempt, exc)
            self.metrics.attempts_lost_to_kafka.inc()
            lost = True
        finally:
            self.inflight.running.pop(job.job_id, None)
            self.scheduler.release()
            self._wake.set()
        if lost:
            self.inflight.track(self.reruns.when_kafka_answers(running, self.admit), running)
            return
        if outcome is Outcome.PREEMPTED:
            # Its offset stays in flight: the same record carries the next attempt.
            self._wait_again(running)
            return
        if running.tp is not None:
            self.ledgers[running.source].done(running.tp, running.offset)

    def _wait_again(self, stopped: Running) -> None:
        """Queue a preempted job's next attempt first of its band (a cancel may end it)."""
        again = Running(
            job=stopped.job,
            source=stopped.source,
            tp=stopped.tp,
            offset=stopped.offset,
            owner=stopped.owner,
            was_preempted=True,
            queued_since=stopped.queued_since,
        )
        now = time.monotonic()
        pending = self.cancels.take(again, now)
        if pending is not None:
            again.cancel = pending
            self.cancels.skip(again)
            return
        # Its wait so far counts: it ages on from when it was first queued.
        self.scheduler.offer_first(again, again.job.data.priority.rank, again.queued_since)
        self.metrics.jobs_waiting.set(self.scheduler.waiting())
