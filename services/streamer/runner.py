"""One attempt of one job: JobStarted, the upstream stream cut into chunks, one final event."""

from __future__ import annotations

import logging
import time

from services.streamer.job import Deps, Outcome, Running
from services.streamer.outcomes import failed, publish_cancelled, requeue
from services.streamer.stream import AttemptStream
from services.streamer.toolcalls import assemble
from services.streamer.upstream import AttemptsExhausted, UpstreamError
from shared.contracts import (
    JobCompleted,
    JobCompletedData,
    JobStarted,
    JobStartedData,
    TokenUsage,
)
from shared.kafka import publish
from shared.logs import bind
from shared.topics import events_topic

__all__ = ["Deps", "Outcome", "Running", "run_job"]

log = logging.getLogger(__name__)


async def run_job(running: Running, deps: Deps) -> Outcome:
    """Run one attempt to a final state (or a retry); CancelledError = shutdown, no final event."""
    job = running.job
    data = job.data
    bind(job.job_id, job.trace_id)
    labels = (data.job_type, data.priority.value)
    events = events_topic(deps.prefix)
    if running.cancel is not None:
        await publish_cancelled(deps, job, running.cancel)
        deps.metrics.jobs_cancelled.labels(*labels).inc()
        return Outcome.CANCELLED
    if data.attempt > deps.retry.max_attempts:
        exhausted = AttemptsExhausted(f"attempt {data.attempt} > {deps.retry.max_attempts}")
        return await failed(deps, job, exhausted, labels, deps.clock())
    allowed = deps.breaker.allow(time.monotonic())
    deps.breaker_gauge.set(deps.breaker.state)
    if not allowed:
        # No attempt was made, so the attempt number stays.
        await requeue(deps, job, attempt=data.attempt, delay=deps.breaker.cooldown_s)
        deps.metrics.jobs_deferred.inc()
        return Outcome.DEFERRED
    started = deps.clock()
    queued_since = (data.not_before or data.submitted_at).timestamp()
    queued_s = max(0.0, started - queued_since)
    deps.metrics.queue_wait.labels(data.priority.value).observe(queued_s)
    deps.metrics.jobs_started.labels(*labels).inc()
    await publish(
        deps.producer,
        events,
        JobStarted(
            job_id=job.job_id,
            trace_id=job.trace_id,
            data=JobStartedData(
                attempt=data.attempt, worker=deps.worker, queued_for_ms=queued_s * 1000
            ),
        ),
    )
    log.info("attempt %d started (%s, %s)", data.attempt, data.job_type, data.priority.value)
    stream = AttemptStream(running, deps, started)
    running.stream = stream  # what it streamed, should the attempt crash past this point
    error: UpstreamError | None = None
    try:
        end = await stream.run()
    except UpstreamError as exc:
        error, end = exc, None
    finally:
        # Closes the upstream HTTP stream (a hung or cancelled one) before any final event.
        await stream.close()
    if error is not None:
        deps.breaker.failure(time.monotonic())
        deps.breaker_gauge.set(deps.breaker.state)
        deps.metrics.upstream_errors.labels(error.kind).inc()
        await stream.drain()
        return await failed(deps, job, error, labels, started, stream.streamed())
    if end is None:
        await stream.drain()
        assert running.cancel is not None
        await publish_cancelled(deps, job, running.cancel, stream.streamed())
        deps.metrics.jobs_cancelled.labels(*labels).inc()
        deps.metrics.job_duration.labels("cancelled").observe(deps.clock() - started)
        return Outcome.CANCELLED
    deps.breaker.success()
    deps.breaker_gauge.set(deps.breaker.state)
    await stream.drain()
    done = deps.clock()
    chunker = stream.chunker
    tool_calls = assemble(chunker.calls) if chunker.calls else None
    await publish(
        deps.producer,
        events,
        JobCompleted(
            job_id=job.job_id,
            trace_id=job.trace_id,
            data=JobCompletedData(
                attempt=data.attempt,
                response=chunker.response(),
                finish_reason=end.finish_reason,
                model=end.model,
                usage=TokenUsage(
                    prompt_tokens=end.prompt_tokens,
                    completion_tokens=end.completion_tokens,
                    total_tokens=end.total_tokens,
                    cached_tokens=end.cached_tokens,
                    reasoning_tokens=end.reasoning_tokens,
                ),
                chunks=chunker.next_seq,
                last_seq=chunker.last_seq,
                time_to_first_token_ms=(
                    (stream.first_token_at - started) * 1000 if stream.first_token_at else None
                ),
                duration_ms=(done - started) * 1000,
                tool_calls=tool_calls,
                usage_estimated=stream.usage_estimated,
            ),
        ),
    )
    log.info(
        "attempt %d completed: %d tokens in %.0f ms",
        data.attempt,
        end.completion_tokens,
        (done - started) * 1000,
    )
    deps.metrics.jobs_completed.labels(*labels).inc()
    deps.metrics.job_duration.labels("completed").observe(done - started)
    if stream.usage_estimated:
        deps.metrics.usage_estimated.inc()
    if tool_calls:
        deps.metrics.tool_calls.inc(len(tool_calls))
    return Outcome.COMPLETED
