"""The hub: records in, frames out; it routes between the parts and holds no rule of its own.

Records go to the jobs (`jobs.py`, `state.py`), their frames to the subscribers
(`fanout.py`); a subscription is checked (`authorisation.py`), answered from
where the client stopped (`resume.py`), and a client that falls behind is
told to resync (`backpressure.py`).

Everything here runs on the event loop without awaiting, so a subscription's
replay snapshot and its registration for live frames happen in one step:
no chunk can slip between them (no gap) or be both replayed and sent live
(no duplicate).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

from services.notifier import resume
from services.notifier.authorisation import Authorisation
from services.notifier.backpressure import Backpressure
from services.notifier.client import Client
from services.notifier.fanout import Fanout
from services.notifier.frames import FINAL_EVENTS, Frame, control, event_frame
from services.notifier.jobs import JobTable
from services.notifier.metrics import NotifierMetrics
from services.notifier.owners import OwnerIndex
from services.notifier.placement import Placement
from services.notifier.state import JobState
from shared.contracts import JobAccepted, LifecycleEvent, TokenChunk
from shared.lifecycle import EVENT_STATUS

log = logging.getLogger(__name__)


class Hub:
    def __init__(
        self,
        metrics: NotifierMetrics,
        *,
        ttl_s: float = 300.0,
        max_jobs: int = 50_000,
        pending_s: float = 5.0,
        final_wait_s: float = 5.0,
        max_resyncs: int = 3,
        max_subscriptions: int = 100,
        owners: OwnerIndex | None = None,
        placement: Placement | None = None,
    ) -> None:
        self.metrics = metrics
        # Which jobs' chunks are read here; the others' clients are sent to their instance.
        self.placement = placement if placement is not None else Placement()
        self.owners = owners if owners is not None else OwnerIndex(max_jobs * 10)
        self.table = JobTable(
            self.owners,
            max_jobs=max_jobs,
            ttl_s=ttl_s,
            final_wait_s=final_wait_s,
            on_evict=self._evicted,
        )
        self.backpressure = Backpressure(
            metrics, max_resyncs, detach=self._detach, job=self.table.states.get
        )
        self.fanout = Fanout(self.backpressure.overflow)
        self.auth = Authorisation(
            metrics,
            pending_s=pending_s,
            max_subscriptions=max_subscriptions,
            reply=self.backpressure.reply,
        )
        self.ahead = resume.Ahead()
        self.reply = self.backpressure.reply
        self.live = False  # history replayed: chunks now are live (latency is measured)
        # Used per chunk: bound once, so the hot path is one lookup away from each.
        self._state = self.table.state
        self._send = self.fanout.send
        self._job_subs = self.fanout.jobs
        self._ahead = self.ahead.by_job

    @property
    def jobs(self) -> OrderedDict[str, JobState]:
        return self.table.states

    @property
    def subscriptions(self) -> int:
        return self.fanout.count

    def finished(self, job_id: str) -> bool:
        return self.table.finished(job_id)

    # -- records ---------------------------------------------------------------------------

    def on_history(self, record: LifecycleEvent) -> None:
        """An event older than the replayed window: only who owns the job and how it ended."""
        if isinstance(record, JobAccepted):
            owner = self.owners.accepted(record.job_id, record.data.user_id)
            state = self.table.states.get(record.job_id)
            if state is not None and state.owner is None:
                # Its live chunks were read before this older fact: the job began earlier.
                state.owner, state.partial = owner, True
        elif record.type in FINAL_EVENTS:
            self.owners.ended(record.job_id, EVENT_STATUS[record.type])

    def on_chunk(self, record: TokenChunk, now: float) -> None:
        state = self._state(record.job_id)
        frame, released = state.apply_chunk(record)
        if frame is not None:
            subs = self._job_subs.get(record.job_id)
            if subs:
                ahead = self._ahead.get(record.job_id)
                if ahead:
                    subs = self.ahead.skip(record, ahead, subs)
                self._send(subs, frame)
            if self.live:
                self.metrics.delivery_latency.observe(
                    time.time() - record.data.emitted_at.timestamp()
                )
        if released is not None:
            self._finish(state, released, now)

    def on_event(self, record: LifecycleEvent, now: float) -> None:
        placement = self.placement
        if placement.split and not placement.serves(record.job_id):
            self._foreign_event(record)
            return
        state = self.table.state(record.job_id, now)
        had_owner = state.owner is not None
        if isinstance(record, JobAccepted):
            owner = self.owners.accepted(record.job_id, record.data.user_id)
            if owner != record.data.user_id:
                log.warning(
                    "job.accepted naming another owner ignored", extra={"job_id": record.job_id}
                )
        elif record.type in FINAL_EVENTS:
            self.owners.ended(record.job_id, EVENT_STATUS[record.type])
        frame = state.apply_event(record, now)
        if frame is not None:
            if frame.final:
                self._finish(state, frame, now)
                watchers = len(self._job_subs.get(record.job_id, ()))
                if watchers:
                    # One line per finished job someone watched: a trace ends here.
                    log.info(
                        "%s sent to %d subscribers",
                        record.type,
                        watchers,
                        extra={"job_id": record.job_id, "trace_id": record.trace_id},
                    )
            else:
                self.fanout.deliver(state, frame)
        elif state.held is not None:
            self.table.hold(state.job_id)
        if not had_owner and state.owner is not None and record.job_id in self.auth.pending:
            for p in self.auth.granted(state):
                self._attach(p.client, state, p.last_seq, p.attempt)

    def _foreign_event(self, record: LifecycleEvent) -> None:
        """An event of a job another instance serves: for its owner's user channel only.

        No job state is kept (its chunks are not read here, so a final event is not held for
        them); the owner index alone says who may see it and drops repeated facts.
        """
        job_id = record.job_id
        owners = self.owners
        if isinstance(record, JobAccepted):
            known = owners.owner(job_id)
            if owners.accepted(job_id, record.data.user_id) != record.data.user_id:
                log.warning("job.accepted naming another owner ignored", extra={"job_id": job_id})
                return
            if known is not None:
                return  # a repeated job.accepted
            if job_id in self.auth.pending:
                for p in self.auth.granted(JobState(job_id, owner=record.data.user_id)):
                    self._redirect(p.client, job_id)
        elif record.type in FINAL_EVENTS:
            if owners.status(job_id) is not None:
                return  # the job already ended
            owners.ended(job_id, EVENT_STATUS[record.type])
        owner = owners.owner(job_id)
        users = self.fanout.users.get(owner) if owner is not None else None
        if users:
            # A user channel's frame carries no stream position: attempt and seq are moot here.
            self._send(users, event_frame(record, 0, -1))

    def _finish(self, state: JobState, frame: Frame, now: float) -> None:
        self.table.ended(state.job_id, now)
        self.fanout.deliver(state, frame)

    # -- subscriptions -----------------------------------------------------------------------

    def subscribe_job(
        self, client: Client, job_id: str, last_seq: int, attempt: int | None, now: float
    ) -> None:
        """Subscribe at once if the job is known and the client's; otherwise wait for its owner."""
        channel = f"job:{job_id}"
        self.auth.check_room(client, channel)
        self._detach(client, channel)
        self.auth.cancel(client, channel)
        assert client.principal is not None
        placement = self.placement
        if placement.split and not placement.serves(job_id):
            # Authorised first, from the owner index every instance holds: a client that may
            # not see the job gets the same delayed refusal as anywhere else.
            owner = self.owners.owner(job_id)
            if owner is not None and client.principal.may_see(owner):
                self._redirect(client, job_id)
            else:
                self.auth.wait(client, job_id, last_seq, attempt, now)
            return
        state = self.table.known(job_id, now)
        if state is not None and self.auth.may_see(client, state):
            self._attach(client, state, last_seq, attempt)
        else:
            self.auth.wait(client, job_id, last_seq, attempt, now)

    def subscribe_user(self, client: Client, user_id: str) -> None:
        channel = f"user:{user_id}"
        self.auth.check_room(client, channel)
        self.auth.check_user(client, user_id)
        self.fanout.add_user(client, user_id)
        self.reply(client, [control("subscribed", channel=channel)])
        client.on_subscribe(channel, True)

    def _redirect(self, client: Client, job_id: str) -> None:
        owner = self.placement.owner(job_id)
        self.metrics.redirects.inc()
        if client.on_redirect is not None:
            client.on_redirect(job_id, owner)
        else:
            self.reply(client, [self.placement.redirect_frame(job_id, owner)])

    def _attach(self, client: Client, state: JobState, last_seq: int, attempt: int | None) -> None:
        frames = resume.answer(state, last_seq, attempt)
        self.ahead.note(client, state, last_seq, attempt)
        self.fanout.add_job(client, state.job_id)
        client.on_subscribe(f"job:{state.job_id}", True)
        # Registered first, so that a client too far behind for the replay is told to resync it.
        self.reply(client, frames)

    def unsubscribe(self, client: Client, channel: str) -> bool:
        """Remove a live or waiting subscription; False if there was none."""
        return self._detach(client, channel) or self.auth.cancel(client, channel)

    def drop(self, client: Client) -> None:
        """Forget a client that went away."""
        for channel in list(client.channels):
            self._detach(client, channel)
        for channel in list(client.pending):
            self.auth.cancel(client, channel)

    def _detach(self, client: Client, channel: str) -> bool:
        if not self.fanout.remove(client, channel):
            return False
        kind, _, ident = channel.partition(":")
        if kind == "job":
            self.ahead.forget(client, ident)
        return True

    def _evicted(self, job_id: str) -> None:
        self.ahead.forget_job(job_id)
        self.fanout.drop_job(job_id)

    # -- housekeeping ------------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Refuse expired waiting subscriptions, release overdue finals, evict old jobs."""
        self.auth.expire(now)
        for state, frame in self.table.overdue_finals(now):
            self._finish(state, frame, now)
        self.table.evict_expired(now)
        self.metrics.jobs_tracked.set(len(self.table.states))
        self.metrics.owners_known.set(len(self.owners))
        self.metrics.subscriptions.set(self.fanout.count)
