"""Subscriptions and fan-out: which clients get which frames, and the jobs they come from.

Everything here runs on the event loop without awaiting, so a subscription's
replay snapshot and its registration for live frames happen in one step:
no chunk can slip between them (no gap) or be both replayed and sent live
(no duplicate).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from services.notifier.client import Client
from services.notifier.frames import FINAL_EVENTS, Frame, control
from services.notifier.metrics import NotifierMetrics
from services.notifier.owners import OwnerIndex
from services.notifier.state import STATUS_OF, JobState
from shared.contracts import JobAccepted, LifecycleEvent, TokenChunk

log = logging.getLogger(__name__)

FORBIDDEN = "no such job, or not yours"
FINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})


@dataclass(slots=True)
class Pending:
    client: Client
    job_id: str
    last_seq: int
    attempt: int | None
    deadline: float


class SubscribeError(Exception):
    """A subscription refused at once (not the job-ownership answer, which is delayed)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


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
    ) -> None:
        self.metrics = metrics
        self.ttl_s = ttl_s
        self.max_jobs = max_jobs
        self.pending_s = pending_s
        self.final_wait_s = final_wait_s
        self.max_resyncs = max_resyncs
        self.max_subscriptions = max_subscriptions
        self.owners = owners if owners is not None else OwnerIndex(max_jobs * 10)
        self.jobs: OrderedDict[str, JobState] = OrderedDict()
        self.job_subs: dict[str, set[Client]] = {}
        self.user_subs: dict[str, set[Client]] = {}
        self.pending: dict[str, list[Pending]] = {}
        self.live = False  # history replayed: chunks now are live (latency is measured)
        self._finished: deque[tuple[float, str]] = deque()
        self._held: set[str] = set()
        self._subscriptions = 0
        # Clients that resumed past what was read here: job → client → (attempt, last seq).
        self._ahead: dict[str, dict[Client, tuple[int, int]]] = {}

    # -- records ---------------------------------------------------------------------------

    def _state(self, job_id: str, now: float | None = None) -> JobState:
        state = self.jobs.get(job_id)
        if state is None:
            if len(self.jobs) >= self.max_jobs:
                self._evict(next(iter(self.jobs)))
            state = self.jobs[job_id] = JobState(job_id)
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

    def on_history(self, record: LifecycleEvent) -> None:
        """An event older than the replayed window: only who owns the job and how it ended."""
        if isinstance(record, JobAccepted):
            owner = self.owners.accepted(record.job_id, record.data.user_id)
            state = self.jobs.get(record.job_id)
            if state is not None and state.owner is None:
                # Its live chunks were read before this older fact: the job began earlier.
                state.owner, state.partial = owner, True
        elif record.type in FINAL_EVENTS:
            self.owners.ended(record.job_id, STATUS_OF[record.type])

    def on_chunk(self, record: TokenChunk, now: float) -> None:
        state = self._state(record.job_id)
        frame, released = state.apply_chunk(record)
        if frame is not None:
            subs = self.job_subs.get(record.job_id)
            if subs:
                ahead = self._ahead.get(record.job_id)
                if ahead:
                    subs = self._not_ahead(record, ahead, subs)
                self._fanout(subs, frame)
            if self.live:
                self.metrics.delivery_latency.observe(
                    time.time() - record.data.emitted_at.timestamp()
                )
        if released is not None:
            self._finish(state, released, now)

    def on_event(self, record: LifecycleEvent, now: float) -> None:
        state = self._state(record.job_id, now)
        had_owner = state.owner is not None
        if isinstance(record, JobAccepted):
            owner = self.owners.accepted(record.job_id, record.data.user_id)
            if owner != record.data.user_id:
                log.warning(
                    "job.accepted naming another owner ignored", extra={"job_id": record.job_id}
                )
        elif record.type in FINAL_EVENTS:
            self.owners.ended(record.job_id, STATUS_OF[record.type])
        frame = state.apply_event(record, now)
        if frame is not None:
            if frame.final:
                self._finish(state, frame, now)
                watchers = len(self.job_subs.get(record.job_id, ()))
                if watchers:
                    # One line per finished job someone watched: a trace ends here.
                    log.info(
                        "%s sent to %d subscribers",
                        record.type,
                        watchers,
                        extra={"job_id": record.job_id, "trace_id": record.trace_id},
                    )
            else:
                self._deliver(state, frame)
        elif state.held is not None:
            self._held.add(state.job_id)
        if not had_owner and state.owner is not None and record.job_id in self.pending:
            self._resolve_pending(state)

    def _not_ahead(
        self, record: TokenChunk, ahead: dict[Client, tuple[int, int]], subs: set[Client]
    ) -> set[Client]:
        """Leave out clients that already have this chunk; forget those it catches up with."""
        attempt, seq = record.data.attempt, record.data.seq
        skip = set()
        for client, (their_attempt, their_seq) in list(ahead.items()):
            if attempt < their_attempt or (attempt == their_attempt and seq <= their_seq):
                skip.add(client)
            if attempt > their_attempt or (attempt == their_attempt and seq >= their_seq):
                del ahead[client]
        if not ahead:
            del self._ahead[record.job_id]
        return subs - skip if skip else subs

    def _deliver(self, state: JobState, frame: Frame) -> None:
        subs = self.job_subs.get(state.job_id)
        if subs:
            self._fanout(subs, frame)
        if state.owner is not None:
            users = self.user_subs.get(state.owner)
            if users:
                self._fanout(users, frame)

    def _finish(self, state: JobState, frame: Frame, now: float) -> None:
        self._held.discard(state.job_id)
        self._finished.append((now, state.job_id))
        self._deliver(state, frame)

    # -- fan-out and backpressure ------------------------------------------------------------

    def _fanout(self, subs: set[Client], frame: Frame) -> None:
        overflowed: list[Client] | None = None
        for client in subs:
            if not client.offer(frame):
                if overflowed is None:
                    overflowed = []
                overflowed.append(client)
        if overflowed:
            for client in overflowed:
                self._overflow(client)

    def reply(self, client: Client, frames: list[Frame]) -> None:
        """Queue an answer to the client; one that left its outbox full is a slow consumer."""
        if not client.push(frames):
            self._overflow(client)

    def finished(self, job_id: str) -> bool:
        state = self.jobs.get(job_id)
        return state is not None and state.status in FINAL_STATUSES

    def _overflow(self, client: Client) -> None:
        """The client fell `limit` frames behind: drop its backlog and tell it to resync."""
        if client.closing is not None:
            return  # already on its way out: nothing more is queued for it
        client.resyncs += 1
        self.metrics.resyncs.inc()
        channels = sorted(client.channels)
        for channel in channels:
            self._detach(client, channel)
        if client.resyncs > self.max_resyncs:
            self.metrics.frames_dropped.inc(client.reset(()) + 1)
            self.metrics.slow_closes.inc()
            client.kill(4008, "slow consumer")
            return
        frames = [self._resync_frame(channel) for channel in channels]
        self.metrics.frames_dropped.inc(client.reset(frames) + 1)

    def _resync_frame(self, channel: str) -> Frame:
        kind, _, ident = channel.partition(":")
        if kind == "job":
            state = self.jobs.get(ident)
            if state is not None:
                return control(
                    "resync",
                    channel=channel,
                    job_id=ident,
                    reason="slow consumer",
                    attempt=state.attempt,
                    last_seq=state.last_seq,
                    status=state.status,
                )
        return control("resync", channel=channel, reason="slow consumer")

    # -- subscriptions -----------------------------------------------------------------------

    def _check_room(self, client: Client, channel: str) -> None:
        if channel in client.channels or channel in client.pending:
            return  # a resubscription replaces the old one
        if len(client.channels) + len(client.pending) >= self.max_subscriptions:
            raise SubscribeError(
                "too_many_subscriptions", f"at most {self.max_subscriptions} per connection"
            )

    def subscribe_job(
        self, client: Client, job_id: str, last_seq: int, attempt: int | None, now: float
    ) -> None:
        """Subscribe at once if the job is known and the client's; otherwise wait (see below).

        An unknown job may simply not have been read yet (the client subscribed
        right after the 202), so the subscription waits for its job.accepted.
        A job of another user waits the same time before the same refusal, so
        neither answer nor timing tells whether the id exists.
        """
        channel = f"job:{job_id}"
        self._check_room(client, channel)
        self._detach(client, channel)
        self._drop_pending(client, channel)
        state = self.jobs.get(job_id)
        if state is None and self.owners.owner(job_id) is not None:
            state = self._state(job_id, now)  # older than the history: known by its owner only
        principal = client.principal
        assert principal is not None
        if state is not None and state.owner is not None and principal.may_see(state.owner):
            self._attach(client, state, last_seq, attempt)
            return
        client.pending.add(channel)
        self.pending.setdefault(job_id, []).append(
            Pending(client, job_id, last_seq, attempt, now + self.pending_s)
        )

    def subscribe_user(self, client: Client, user_id: str) -> None:
        channel = f"user:{user_id}"
        self._check_room(client, channel)
        principal = client.principal
        assert principal is not None
        if not principal.may_see(user_id):
            self.metrics.auth_failures.labels("forbidden").inc()
            raise SubscribeError("forbidden", "not your user channel")
        if channel not in client.channels:
            client.channels.add(channel)
            self.user_subs.setdefault(user_id, set()).add(client)
            self._subscriptions += 1
        self.reply(client, [control("subscribed", channel=channel)])
        client.on_subscribe(channel, True)

    def _attach(self, client: Client, state: JobState, last_seq: int, attempt: int | None) -> None:
        channel = f"job:{state.job_id}"
        replay = state.replay(last_seq, attempt)
        head = control(
            "subscribed",
            channel=channel,
            job_id=state.job_id,
            status=state.status,
            attempt=state.attempt,
            last_seq=state.last_seq,
            restarted=replay.restarted,
        )
        frames = [head]
        if replay.missing:
            frames.append(
                control(
                    "resync",
                    channel=channel,
                    job_id=state.job_id,
                    reason="history unavailable",
                    attempt=state.attempt,
                    first_seq=state.first_seq,
                    last_seq=state.last_seq,
                    status=state.status,
                )
            )
        frames.extend(replay.frames)
        if state.is_ahead(last_seq, attempt):
            key = attempt if attempt is not None else max(state.attempt, 1)
            self._ahead.setdefault(state.job_id, {})[client] = (key, last_seq)
        client.channels.add(channel)
        self.job_subs.setdefault(state.job_id, set()).add(client)
        self._subscriptions += 1
        client.on_subscribe(channel, True)
        # Registered first, so that a client too far behind for the replay is told to resync it.
        self.reply(client, frames)

    def _resolve_pending(self, state: JobState) -> None:
        waiting = self.pending.get(state.job_id, [])
        keep = []
        for p in waiting:
            principal = p.client.principal
            if state.owner is not None and principal is not None and principal.may_see(state.owner):
                p.client.pending.discard(f"job:{state.job_id}")
                self._attach(p.client, state, p.last_seq, p.attempt)
            else:
                keep.append(p)
        if keep:
            self.pending[state.job_id] = keep
        else:
            self.pending.pop(state.job_id, None)

    def _refuse(self, p: Pending) -> None:
        channel = f"job:{p.job_id}"
        p.client.pending.discard(channel)
        self.metrics.auth_failures.labels("forbidden").inc()
        self.reply(p.client, [error_frame("forbidden", FORBIDDEN, channel=channel)])
        p.client.on_subscribe(channel, False)

    def unsubscribe(self, client: Client, channel: str) -> bool:
        """Remove a live or waiting subscription; False if there was none."""
        return self._detach(client, channel) or self._drop_pending(client, channel)

    def _detach(self, client: Client, channel: str) -> bool:
        if channel not in client.channels:
            return False
        client.channels.discard(channel)
        kind, _, ident = channel.partition(":")
        table = self.job_subs if kind == "job" else self.user_subs
        if kind == "job" and ident in self._ahead:
            self._ahead[ident].pop(client, None)
        subs = table.get(ident)
        if subs is not None:
            subs.discard(client)
            if not subs:
                del table[ident]
        self._subscriptions -= 1
        return True

    def _drop_pending(self, client: Client, channel: str) -> bool:
        if channel not in client.pending:
            return False
        client.pending.discard(channel)
        job_id = channel.partition(":")[2]
        left = [p for p in self.pending.get(job_id, []) if p.client is not client]
        if left:
            self.pending[job_id] = left
        else:
            self.pending.pop(job_id, None)
        return True

    def drop(self, client: Client) -> None:
        """Forget a client that went away."""
        for channel in list(client.channels):
            self._detach(client, channel)
        for channel in list(client.pending):
            self._drop_pending(client, channel)

    # -- housekeeping ------------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Refuse expired waiting subscriptions, release overdue finals, evict old jobs."""
        for job_id in [j for j, ps in self.pending.items() if ps[0].deadline <= now]:
            left = []
            for p in self.pending[job_id]:
                if p.deadline <= now:
                    self._refuse(p)
                else:
                    left.append(p)
            if left:
                self.pending[job_id] = left
            else:
                del self.pending[job_id]
        for job_id in list(self._held):
            state = self.jobs.get(job_id)
            if state is None or state.held is None:
                self._held.discard(job_id)
            elif now - state.held_since >= self.final_wait_s:
                frame = state.release_held(now)
                if frame is not None:
                    self._finish(state, frame, now)
        while self._finished and self._finished[0][0] + self.ttl_s <= now:
            _, job_id = self._finished.popleft()
            state = self.jobs.get(job_id)
            done_at = state.finished_at if state is not None else None
            if done_at is not None and done_at + self.ttl_s <= now:
                self._evict(job_id)
        self.metrics.jobs_tracked.set(len(self.jobs))
        self.metrics.owners_known.set(len(self.owners))
        self.metrics.subscriptions.set(self._subscriptions)

    def _evict(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)
        self._ahead.pop(job_id, None)
        self._held.discard(job_id)
        channel = f"job:{job_id}"
        for client in self.job_subs.pop(job_id, set()):
            client.channels.discard(channel)
            self._subscriptions -= 1

    @property
    def subscriptions(self) -> int:
        return self._subscriptions


def error_frame(code: str, message: str, **fields: object) -> Frame:
    return control("error", code=code, message=message, **fields)
