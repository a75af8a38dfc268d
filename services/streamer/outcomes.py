"""The events that end an attempt: cancelled, retrying (re-queued), failed and dead-lettered."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Literal

from services.streamer.job import Deps, Outcome
from services.streamer.rejects import MAX_ORIGINAL_BYTES
from services.streamer.streamed import Streamed, nothing_streamed
from services.streamer.upstream import InternalError, UpstreamError
from shared.contracts import (
    CancelJobData,
    DeadLetterData,
    JobCancelled,
    JobCancelledData,
    JobDeadLettered,
    JobFailed,
    JobFailedData,
    JobRetrying,
    JobRetryingData,
    ResumeFrom,
    RunJob,
)
from shared.kafka import publish
from shared.topics import dlq_topic, events_topic, job_topic, retry_topic

log = logging.getLogger(__name__)


async def publish_cancelled(
    deps: Deps,
    job: RunJob,
    cancel: CancelJobData,
    streamed: Streamed | None = None,
    upstream: str | None = None,
) -> None:
    """The cancelled fact, with what the attempt had streamed (nothing when it never ran)."""
    so_far = streamed if streamed is not None else nothing_streamed(job.data)
    await publish(
        deps.producer,
        events_topic(deps.prefix),
        JobCancelled(
            job_id=job.job_id,
            trace_id=job.trace_id,
            data=JobCancelledData(
                attempt=job.data.attempt,
                reason=cancel.reason,
                last_seq=so_far.last_seq,
                model=so_far.model,
                upstream=upstream,
                continues=job.data.resume.attempt if job.data.resume is not None else None,
                usage=so_far.usage,
                usage_estimated=so_far.estimated,
            ),
        ),
    )


async def requeue(
    deps: Deps,
    job: RunJob,
    *,
    attempt: int,
    delay: float,
    resume: ResumeFrom | Literal[False] | None = False,
) -> datetime:
    """The job again on the retry topic; `resume` replaces the stream it continues (False:
    keeps it)."""
    retry_at = datetime.now(UTC) + timedelta(seconds=delay)
    update: dict[str, object] = {"attempt": attempt, "not_before": retry_at}
    if resume is not False:
        update["resume"] = resume
    again = RunJob(
        job_id=job.job_id, trace_id=job.trace_id, data=job.data.model_copy(update=update)
    )
    await publish(deps.producer, retry_topic(deps.prefix), again)
    return retry_at


async def publish_retrying(
    deps: Deps,
    job: RunJob,
    reason: str,
    retry_at: datetime,
    so_far: Streamed,
    upstream: str | None,
    *,
    requeued: bool = True,
    preempted: bool = False,
) -> None:
    """The retrying fact of a failed attempt: where it ran and what it used (billed)."""
    data = job.data
    await publish(
        deps.producer,
        events_topic(deps.prefix),
        JobRetrying(
            job_id=job.job_id,
            trace_id=job.trace_id,
            data=JobRetryingData(
                attempt=data.attempt,
                next_attempt=data.attempt + 1,
                reason=reason,
                retry_at=retry_at,
                upstream=upstream,
                model=so_far.model,
                usage=so_far.usage,
                usage_estimated=so_far.estimated,
                continues=data.resume.attempt if data.resume is not None else None,
                requeued=requeued,
                preempted=preempted,
            ),
        ),
    )


async def failed(
    deps: Deps,
    job: RunJob,
    exc: UpstreamError,
    labels: tuple[str, str],
    started: float,
    streamed: Streamed | None = None,
    *,
    upstream: str | None = None,
    resume: ResumeFrom | None = None,
) -> Outcome:
    """Retry a retriable failure while attempts remain; else the failed fact and the DLQ.

    `streamed` is what the attempt had streamed; None when it never reached the upstream.
    `upstream` is the one it asked; `resume` what the next attempt continues (None: it
    restarts the answer).
    """
    data = job.data
    so_far = streamed if streamed is not None else nothing_streamed(data)
    deps.metrics.job_duration.labels("failed").observe(deps.clock() - started)
    reason = f"{exc.kind}: {exc}"
    if exc.retriable and data.attempt < deps.retry.max_attempts:
        delay = deps.retry.delay(data.attempt, getattr(exc, "retry_after", None))
        retry_at = datetime.now(UTC) + timedelta(seconds=delay)
        await publish_retrying(deps, job, reason, retry_at, so_far, upstream)
        await requeue(deps, job, attempt=data.attempt + 1, delay=delay, resume=resume)
        deps.metrics.jobs_retried.labels(*labels).inc()
        log.info("attempt %d failed (%s); retry in %.2f s", data.attempt, reason, delay)
        return Outcome.RETRYING
    log.warning("job failed for good after attempt %d: %s", data.attempt, reason)
    await publish(
        deps.producer,
        events_topic(deps.prefix),
        JobFailed(
            job_id=job.job_id,
            trace_id=job.trace_id,
            data=JobFailedData(
                attempt=data.attempt,
                reason=reason,
                error_type=type(exc).__name__,
                retriable=exc.retriable,
                last_seq=so_far.last_seq,
                model=so_far.model,
                upstream=upstream,
                continues=data.resume.attempt if data.resume is not None else None,
                usage=so_far.usage,
                usage_estimated=so_far.estimated,
            ),
        ),
    )
    await publish(
        deps.producer,
        dlq_topic(deps.prefix),
        JobDeadLettered(
            job_id=job.job_id,
            trace_id=job.trace_id,
            data=DeadLetterData(
                reason=reason,
                error_type=type(exc).__name__,
                source_topic=(
                    retry_topic(deps.prefix)
                    if data.attempt > 1
                    else job_topic(data.priority, deps.prefix)
                ),
                attempts=data.attempt,
                # Bounded like every DLQ copy: the job itself stays in its source topic.
                original=job.model_dump_json()[: MAX_ORIGINAL_BYTES // 2],
            ),
        ),
    )
    deps.metrics.jobs_failed.labels(*labels).inc()
    return Outcome.FAILED


class KafkaEvents:
    """The events port of the dispatch and cancel use cases, published through `deps`."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    async def cancelled(self, job: RunJob, cancel: CancelJobData) -> None:
        await publish_cancelled(self.deps, job, cancel)

    async def crashed(self, job: RunJob, exc: InternalError, streamed: Streamed | None) -> None:
        labels = (job.data.job_type, job.data.priority.value)
        await failed(self.deps, job, exc, labels, time.time(), streamed)
