"""Admission of a valid submission, top to bottom: its Idempotency-Key, the user's limits,
then the job's accepted fact and its command published together; a failed publish leaves a
repair behind. No HTTP here: an `Admitted` job or a `Rejection` comes out."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from services.gateway.idempotency import Remembered, short_digest
from services.gateway.metrics import GatewayMetrics
from services.gateway.publisher import Publisher
from services.gateway.rejection import Rejection, retry_later
from services.gateway.repair import Repairs
from services.gateway.view import EventsView, JobEntry, fingerprint, idempotent_job_id
from shared.api import JobSubmission
from shared.auth import Principal
from shared.contracts import JobAccepted, JobAcceptedData, RunJob, RunJobData, utcnow
from shared.topics import events_topic, job_topic

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Admitted:
    job_id: str
    entry: JobEntry | Remembered
    replayed: bool


def build_records(
    submission: JobSubmission,
    *,
    user_id: str,
    job_id: str,
    trace_id: str,
    submitted_at: datetime,
    accept_by: datetime | None = None,
) -> tuple[JobAccepted, RunJob]:
    """The lifecycle fact and the command of one accepted job, with one trace id.

    `accept_by` is when the gateway gives up on the command: appended later, it is not run.
    """
    spec: dict[str, Any] = {
        "user_id": user_id,
        "prompt": submission.prompt,
        "job_type": submission.job_type,
        "priority": submission.priority,
        "config": submission.config,
        "metadata": submission.metadata,
        "submitted_at": submitted_at,
    }
    # Built from a validated submission: constructed, not validated again (the hot path).
    accepted = JobAccepted.model_construct(
        job_id=job_id,
        occurred_at=submitted_at,
        trace_id=trace_id,
        data=JobAcceptedData.model_construct(**spec),
    )
    run = RunJob.model_construct(
        job_id=job_id,
        occurred_at=submitted_at,
        trace_id=trace_id,
        data=RunJobData.model_construct(**spec, attempt=1, accept_by=accept_by),
    )
    return accepted, run


class Admission:
    def __init__(
        self,
        view: EventsView,
        metrics: GatewayMetrics,
        publisher: Publisher,
        repairs: Repairs,
        *,
        prefix: str,
    ) -> None:
        self.view = view
        self.metrics = metrics
        self.publisher = publisher
        self.repairs = repairs
        self.prefix = prefix
        self._pending: dict[str, asyncio.Future[None]] = {}

    async def submit(
        self, who: Principal, sub: JobSubmission, key: str | None, trace_id: str
    ) -> Admitted | Rejection:
        """Admit `sub` for `who`; `key` is a valid Idempotency-Key or None."""
        digest = fingerprint(
            sub.prompt, sub.job_type, sub.priority.value, sub.config.model_dump(), sub.metadata
        )
        if key is None:
            return await self._accept(who, sub, str(uuid.uuid4()), digest, trace_id)
        job_id = idempotent_job_id(who.user_id, key)
        # One publish per key in this instance: a second request waits for the first.
        while (pending := self._pending.get(job_id)) is not None:
            await asyncio.wait([pending])
        known = self.view.job(job_id) or self.view.remembered(job_id)
        if known is not None:
            same = (
                known.fingerprint == digest
                if isinstance(known, JobEntry)
                else known.digest == short_digest(digest)
            )
            if not same:
                self.metrics.rejected.labels("idempotency-key-reused").inc()
                return Rejection(
                    409,
                    "idempotency-key-reused",
                    "Idempotency-Key reused",
                    "this Idempotency-Key was used for a different body",
                    extra={"job_id": job_id},
                )
            self.metrics.replayed.inc()
            return Admitted(job_id, known, replayed=True)
        if self.view.keys.full:
            # Remembering no more keys must not mean forgetting old ones: refuse new ones.
            self.metrics.rejected.labels("idempotency-memory-full").inc()
            return retry_later(
                "idempotency-memory-full",
                "Idempotency-Keys unavailable",
                "the gateway holds as many Idempotency-Keys as it may; submit without one"
                " or try again later",
                self.view.keys.retry_after_s(time.time()),
            )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[job_id] = done
        try:
            return await self._accept(who, sub, job_id, digest, trace_id)
        finally:
            del self._pending[job_id]
            done.set_result(None)

    async def _accept(
        self, who: Principal, sub: JobSubmission, job_id: str, digest: bytes, trace_id: str
    ) -> Admitted | Rejection:
        submitted_at = utcnow()
        at = submitted_at.timestamp()
        limited = self.view.check(who.user_id, at)
        if limited is not None:
            self.metrics.rate_limited.labels(limited.limit.value).inc()
            self.metrics.rejected.labels("rate-limited").inc()
            return Rejection(
                429,
                f"rate-limit-{limited.limit.value}",
                "Too many requests",
                f"at most {limited.allowed} {limited.limit.value.replace('-', ' ')} per user",
                headers={"Retry-After": str(limited.retry_after_s)},
                extra={"limit": limited.limit.value, "allowed": limited.allowed},
            )
        if self.repairs.full:
            # Kafka has been failing: every failed submission leaves a void to retry. Past
            # the bound, refuse before publishing rather than grow the set without end.
            self.metrics.background_full.inc()
            self.metrics.rejected.labels("background-full").inc()
            return retry_later(
                "kafka-unavailable",
                "Job queue unavailable",
                "the gateway is still repairing earlier failed submissions; try again",
                5,
            )
        # The publish below starts after this and gives up `timeout_s` later: past this moment.
        accept_by = submitted_at + timedelta(seconds=self.publisher.timeout_s)
        accepted, run = build_records(
            sub,
            user_id=who.user_id,
            job_id=job_id,
            trace_id=trace_id,
            submitted_at=submitted_at,
            accept_by=accept_by,
        )
        # Counted at once, before the first await: concurrent requests see each other.
        self.view.accepted(
            job_id,
            owner=who.user_id,
            job_type=sub.job_type,
            priority=sub.priority,
            submitted_at=submitted_at,
            digest=digest,
            at=at,
        )
        started = time.perf_counter()
        self.repairs.publishing += 1
        try:
            accepted_error, run_error = await self.publisher.pair(
                (events_topic(self.prefix), accepted), (job_topic(sub.priority, self.prefix), run)
            )
        finally:
            # No await from here to the repair: a failure's task replaces its count at once.
            self.repairs.publishing -= 1
        if run_error is not None:
            self.view.withdraw(job_id, at)
            self.metrics.publish_failures.inc()
            log.warning(
                "job %s not queued: %s: %s",
                job_id,
                type(run_error).__name__,
                run_error,
                extra={"job_id": job_id, "trace_id": trace_id},
            )
            self.repairs.void(job_id, trace_id, who.user_id)
            # A send that failed early may still be appended: refuse only once the deadline
            # the command carries has passed, so a streamer drops it if it arrives after.
            wait_s = (accept_by - utcnow()).total_seconds()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            return retry_later(
                "kafka-unavailable", "Job queue unavailable", "the job was not queued; try again", 1
            )
        if accepted_error is not None:
            # Queued, but the fact is missing: the read side must still learn of the job.
            self.metrics.publish_failures.inc()
            self.repairs.republish(accepted)
        self.metrics.publish_latency.observe(time.perf_counter() - started)
        self.metrics.submitted.labels(sub.job_type, sub.priority.value).inc()
        log.info(
            "job queued (%s, %s)",
            sub.job_type,
            sub.priority.value,
            extra={"job_id": job_id, "trace_id": trace_id},
        )
        entry = self.view.job(job_id)
        assert entry is not None
        return Admitted(job_id, entry, replayed=False)
