"""The gateway's view of the events topic: per user jobs in flight and recent submissions,
per recent job its owner and status. Pure logic, no I/O: the Kafka reader feeds it.

Every gateway instance reads every partition of the events topic, so each one holds the
same view: rate limits, cancel ownership and idempotency hold across instances without a
call to another service. Applying the same event twice changes nothing (keyed by job id),
so an instance applies its own acceptances at once and again when it reads them back.
Every operation is O(1) amortised; memory is bounded by `max_jobs` full entries plus the
compact `IdempotencyMemory` of keyed jobs, which forgets a key only after its window.
Ownership is fixed by a job's first acceptance: a later accepted fact never moves it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.gateway.idempotency import IdempotencyMemory, Remembered
from services.gateway.limits import RateLimited, submission_limit
from shared.lifecycle import JobStatus, status_after
from shared.topics import Priority

# The namespace of job ids derived from an Idempotency-Key: uuid5(NS, user + key).
IDEMPOTENCY_NAMESPACE = uuid.UUID("5b0f3c1e-9d2a-4f5e-8a61-3c7d2e4b9f10")


def idempotent_job_id(user_id: str, key: str) -> str:
    """The job id every gateway instance derives for one user's Idempotency-Key."""
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{user_id}\x00{key}"))


def is_keyed(job_id: str) -> bool:
    """Whether the job id was derived from an Idempotency-Key (uuid version 5)."""
    try:
        return uuid.UUID(job_id).version == 5
    except ValueError:
        return False


def fingerprint(
    prompt: str | list[Any],
    job_type: str,
    priority: str,
    config: dict[str, Any],
    metadata: dict[str, Any],
) -> bytes:
    """A digest of what the user asked for: the same body gives the same fingerprint."""
    canonical = json.dumps(
        [prompt, job_type, priority, config, metadata],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.blake2b(canonical.encode(), digest_size=16).digest()


def job_fingerprint(
    prompt: str,
    messages: list[Any] | None,
    job_type: str,
    priority: str,
    config: dict[str, Any],
    options: dict[str, Any] | None,
    metadata: dict[str, Any],
    retry_of: str | None = None,
) -> bytes:
    """The fingerprint of a job as its records hold it: the messages stand for the prompt
    they carry, and the options set count as config (a prompt job without any options has
    the fingerprint it had before either existed). A retry's counts the job it retries, so
    one Idempotency-Key cannot stand for a retry and a submission, or two retries."""
    if options:
        config = {**config, **{k: v for k, v in options.items() if v is not None}}
    digest = fingerprint(
        prompt if messages is None else messages, job_type, priority, config, metadata
    )
    if retry_of is None:
        return digest
    return hashlib.blake2b(
        digest + b"\x00retry_of\x00" + retry_of.encode(), digest_size=16
    ).digest()


@dataclass(slots=True)
class JobEntry:
    owner: str
    status: JobStatus
    job_type: str
    priority: Priority
    submitted_at: datetime
    fingerprint: bytes
    accepted_at: float  # epoch seconds of the acceptance


@dataclass(slots=True)
class UserState:
    in_flight: int = 0
    entries: int = 0
    recent: deque[float] = field(default_factory=deque)  # submission times, oldest first


class EventsView:
    def __init__(
        self,
        *,
        submissions_per_minute: int,
        max_in_flight: int,
        window_s: float,
        final_retention_s: float,
        max_jobs: int,
        in_flight_retry_after_s: int = 5,
        max_idempotency_keys: int = 2_000_000,
    ) -> None:
        self.submissions_per_minute = submissions_per_minute
        self.max_in_flight = max_in_flight
        self.window_s = window_s
        self.final_retention_s = final_retention_s
        self.max_jobs = max_jobs
        self.in_flight_retry_after_s = in_flight_retry_after_s
        self._jobs: OrderedDict[str, JobEntry] = OrderedDict()  # oldest acceptance first
        self._users: dict[str, UserState] = {}
        self._finals: deque[tuple[float, str]] = deque()  # (final at, job id) of unkeyed jobs
        self.events_applied = 0
        self.keys = IdempotencyMemory(window_s=window_s, max_keys=max_idempotency_keys)

    # -- reading -------------------------------------------------------------------------

    def job(self, job_id: str) -> JobEntry | None:
        return self._jobs.get(job_id)

    def remembered(self, job_id: str) -> Remembered | None:
        """A keyed job accepted within the window whose full entry may be gone."""
        return self.keys.recall(job_id) if is_keyed(job_id) else None

    def in_flight(self, user_id: str) -> int:
        state = self._users.get(user_id)
        return state.in_flight if state else 0

    @property
    def jobs(self) -> int:
        return len(self._jobs)

    @property
    def users(self) -> int:
        return len(self._users)

    def check(self, user_id: str, now: float) -> RateLimited | None:
        """Whether one more submission of `user_id` at `now` would exceed a limit."""
        state = self._users.get(user_id)
        if state is None:
            return None
        return submission_limit(
            state.in_flight,
            state.recent,
            now,
            per_minute=self.submissions_per_minute,
            max_in_flight=self.max_in_flight,
            in_flight_retry_after_s=self.in_flight_retry_after_s,
        )

    # -- applying events -----------------------------------------------------------------

    def accepted(
        self,
        job_id: str,
        *,
        owner: str,
        job_type: str,
        priority: Priority,
        submitted_at: datetime,
        digest: bytes,
        at: float,
    ) -> bool:
        """Record an accepted job; False when it was known already (a replay).

        The first acceptance wins: a later one, whoever it names, changes nothing.
        """
        if job_id in self._jobs:
            return False
        keyed = is_keyed(job_id)
        if keyed and self.keys.recall(job_id) is not None:
            return False  # its entry left the view, but the job is the one accepted first
        if keyed:
            self.keys.remember(
                job_id,
                fingerprint=digest,
                job_type=job_type,
                priority=priority,
                submitted_at=submitted_at,
                at=at,
            )
        self.events_applied += 1
        self._jobs[job_id] = JobEntry(
            owner, JobStatus.QUEUED, job_type, priority, submitted_at, digest, at
        )
        state = self._users.get(owner)
        if state is None:
            state = self._users[owner] = UserState()
        state.entries += 1
        state.in_flight += 1
        state.recent.append(at)
        # Only the last `per_minute` times matter for the limit: keep the deque that short.
        while len(state.recent) > max(self.submissions_per_minute, 1):
            state.recent.popleft()
        while len(self._jobs) > self.max_jobs:
            self._evict_oldest()
        return True

    def status_event(self, job_id: str, event_type: str, at: float) -> None:
        """Apply a lifecycle event other than acceptance; unknown jobs are ignored."""
        entry = self._jobs.get(job_id)
        target = status_after(event_type)
        if target is None or target is JobStatus.QUEUED:
            return
        if entry is None:
            if is_keyed(job_id):
                self._remembered_status(job_id, target)
            return
        self.events_applied += 1
        if entry.status.is_final:
            return  # final is final, whatever arrives late
        entry.status = target
        if is_keyed(job_id):
            self.keys.set_status(job_id, target)
        if target.is_final:
            state = self._users[entry.owner]
            state.in_flight -= 1
            # Keyed or not: a keyed job's key outlives its entry in `keys`.
            self._finals.append((at, job_id))

    def _remembered_status(self, job_id: str, target: JobStatus) -> None:
        known = self.keys.recall(job_id)
        if known is not None and not known.status.is_final:
            self.keys.set_status(job_id, target)

    def withdraw(self, job_id: str, at: float) -> None:
        """Undo `accepted` of a job that was not published after all."""
        entry = self._jobs.get(job_id)
        if entry is None:
            return
        state = self._users[entry.owner]
        with contextlib.suppress(ValueError):
            state.recent.remove(at)  # at most `per_minute` long
        self._forget(job_id, entry)
        if is_keyed(job_id):
            self.keys.forget(job_id)

    def expire(self, now: float) -> None:
        """Forget jobs past the window, final jobs past their retention, keys past the window."""
        self.keys.expire(now)
        jobs = self._jobs
        while jobs:
            job_id, entry = next(iter(jobs.items()))
            if entry.accepted_at > now - self.window_s:
                break
            self._evict_oldest()
        finals = self._finals
        while finals and finals[0][0] <= now - self.final_retention_s:
            _, job_id = finals.popleft()
            final = jobs.get(job_id)
            if final is not None and final.status.is_final:
                self._forget(job_id, final)

    def _evict_oldest(self) -> None:
        job_id, entry = next(iter(self._jobs.items()))
        self._forget(job_id, entry)

    def _forget(self, job_id: str, entry: JobEntry) -> None:
        del self._jobs[job_id]
        state = self._users[entry.owner]
        if not entry.status.is_final:
            state.in_flight -= 1
        state.entries -= 1
        if state.entries == 0:
            del self._users[entry.owner]
