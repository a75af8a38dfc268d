"""One job in its slot: attempts over the model's upstreams, each with JobStarted, the
upstream stream cut into chunks, and one final event (or the next attempt).

An attempt goes to the first upstream of the model's route whose breaker lets it through.
When it fails in a way another server may not (429, 5xx, a timeout, a cut), the next
attempt goes at once to the next upstream of the route (the model's others, then its
fallback model's); once the route is used up, the retry topic's backoff takes over. Every
hop is an attempt with its own number and events, so resume and billing stay per attempt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime

from services.streamer.continuation import asked_of
from services.streamer.job import Deps, Outcome, Running
from services.streamer.outcomes import failed, publish_cancelled, publish_retrying, requeue
from services.streamer.preemption import PREEMPTED_REASON
from services.streamer.stream import AttemptStream
from services.streamer.toolcalls import assemble
from services.streamer.upstream import AttemptsExhausted, UpstreamError, UpstreamRejected
from services.streamer.upstreams import Link
from shared.contracts import (
    JobCompleted,
    JobCompletedData,
    JobStarted,
    JobStartedData,
    ResumeFrom,
    RunJob,
    TokenUsage,
)
from shared.kafka import enqueue, publish
from shared.logs import bind
from shared.topics import events_topic
from shared.upstreams import Hop, OnInterrupt

__all__ = ["Deps", "Outcome", "Running", "run_job"]

log = logging.getLogger(__name__)


class _Broke:
    """An attempt that failed in a way the next upstream may not."""

    __slots__ = ("error", "started", "stream")

    def __init__(self, error: UpstreamError, stream: AttemptStream, started: float) -> None:
        self.error = error
        self.stream = stream
        self.started = started


async def run_job(running: Running, deps: Deps) -> Outcome:
    """Run the job's attempts to a final state (or a retry); CancelledError = shutdown."""
    job = running.job
    data = job.data
    bind(job.job_id, job.trace_id)
    labels = (data.job_type, data.priority.value)
    if running.cancel is not None:
        await publish_cancelled(deps, job, running.cancel)
        deps.metrics.jobs_cancelled.labels(*labels).inc()
        return Outcome.CANCELLED
    if data.attempt > deps.retry.max_attempts:
        exhausted = AttemptsExhausted(f"attempt {data.attempt} > {deps.retry.max_attempts}")
        return await failed(deps, job, exhausted, labels, deps.clock())
    route = deps.upstreams.route(data.config.model)
    if not route:
        unrouted = UpstreamRejected(f"no upstream serves model {data.config.model!r}")
        return await failed(deps, job, unrouted, labels, deps.clock())
    hops: Iterator[tuple[Hop, Link]] = deps.upstreams.allowed(route, time.monotonic())
    step = next(hops, None)
    if step is None:
        # Every upstream's breaker is open: no attempt was made, so the attempt number stays.
        delay = deps.upstreams.shortest_cooldown(route)
        await requeue(deps, job, attempt=data.attempt, delay=delay)
        deps.metrics.jobs_deferred.inc()
        return Outcome.DEFERRED
    continues = deps.upstreams.registry.on_interrupt(data.config.model, data.on_interrupt)
    while True:
        hop, link = step
        result = await _attempt(running, deps, hop, link, labels, continues)
        if not isinstance(result, _Broke):
            return result
        error, stream = result.error, result.stream
        resume = stream.resume_after() if continues == "continue" else None
        nxt = None
        if error.retriable and running.job.data.attempt < deps.retry.max_attempts:
            nxt = next(hops, None)
        if nxt is None:
            return await failed(
                deps,
                running.job,
                error,
                labels,
                result.started,
                stream.streamed(),
                upstream=hop.upstream.name,
                resume=resume,
            )
        await _fall_back(running, deps, result, hop, nxt[0], resume, labels)
        step = nxt


async def _fall_back(
    running: Running,
    deps: Deps,
    broke: _Broke,
    hop: Hop,
    to: Hop,
    resume: ResumeFrom | None,
    labels: tuple[str, str],
) -> None:
    """The failed attempt's retrying fact, then the job as its next attempt, in this slot."""
    job = running.job
    reason = f"{broke.error.kind}: {broke.error}"
    deps.metrics.job_duration.labels("failed").observe(deps.clock() - broke.started)
    await publish_retrying(
        deps,
        job,
        reason,
        datetime.now(UTC),
        broke.stream.streamed(),
        hop.upstream.name,
        requeued=False,
    )
    deps.metrics.jobs_retried.labels(*labels).inc()
    deps.metrics.upstream_fallbacks.labels(hop.upstream.name, to.upstream.name).inc()
    log.info(
        "attempt %d on %s failed (%s); attempt %d falls back to %s (%s)",
        job.data.attempt,
        hop.upstream.name,
        reason,
        job.data.attempt + 1,
        to.upstream.name,
        to.model,
    )
    running.job = _next_attempt(job, resume)
    running.stream = None
    running.reader = None


async def _preempted(
    running: Running,
    deps: Deps,
    stream: AttemptStream,
    hop: Hop,
    labels: tuple[str, str],
    on_interrupt: OnInterrupt,
) -> Outcome:
    """The stopped attempt's retrying fact; the job becomes its next attempt, which the
    dispatcher queues again (continuing the answer where the model allows)."""
    job = running.job
    data = job.data
    resume = stream.resume_after() if on_interrupt == "continue" else None
    deps.metrics.job_duration.labels("preempted").observe(deps.clock() - stream.started)
    await publish_retrying(
        deps,
        job,
        PREEMPTED_REASON,
        datetime.now(UTC),
        stream.streamed(),
        hop.upstream.name,
        requeued=False,
        preempted=True,
    )
    deps.metrics.jobs_preempted.labels(*labels).inc()
    log.info(
        "attempt %d preempted for an urgent job; attempt %d waits", data.attempt, data.attempt + 1
    )
    running.job = _next_attempt(job, resume)
    return Outcome.PREEMPTED


def _next_attempt(job: RunJob, resume: ResumeFrom | None) -> RunJob:
    """The job as its next attempt, restarting its answer or continuing `resume`."""
    data = job.data.model_copy(update={"attempt": job.data.attempt + 1, "resume": resume})
    return RunJob(job_id=job.job_id, trace_id=job.trace_id, data=data)


async def _attempt(
    running: Running,
    deps: Deps,
    hop: Hop,
    link: Link,
    labels: tuple[str, str],
    on_interrupt: OnInterrupt,
) -> Outcome | _Broke:
    """One attempt on one upstream: its final event, or `_Broke` for the caller to decide."""
    job = running.job
    data = job.data
    if running.cancel is not None:  # cancelled between two attempts of this slot
        await publish_cancelled(deps, job, running.cancel)
        deps.metrics.jobs_cancelled.labels(*labels).inc()
        return Outcome.CANCELLED
    events = events_topic(deps.prefix)
    started = deps.clock()
    # The slot's first attempt started when the slot was given; a fallback, when it begins.
    started_at, running.slot_at = running.slot_at or datetime.now(UTC), None
    queued_since = (data.not_before or data.submitted_at).timestamp()
    queued_s = max(0.0, started_at.timestamp() - queued_since)
    deps.metrics.queue_wait.labels(data.priority.value).observe(queued_s)
    deps.metrics.jobs_started.labels(*labels).inc()
    continues = data.resume.attempt if data.resume is not None else None
    # Not awaited here: the upstream request goes out while the broker takes the fact. The
    # stream waits for it before its first chunk and `drain` before any final event, so
    # no chunk of an attempt exists without its JobStarted (the claim a rerun counts on).
    started_sent = await enqueue(
        deps.producer,
        events,
        JobStarted(
            job_id=job.job_id,
            trace_id=job.trace_id,
            occurred_at=started_at,
            data=JobStartedData(
                attempt=data.attempt,
                worker=deps.worker,
                queued_for_ms=queued_s * 1000,
                upstream=hop.upstream.name,
                model=hop.model,
                continues=continues,
            ),
        ),
    )
    log.info(
        "attempt %d started on %s (%s, %s)",
        data.attempt,
        hop.upstream.name,
        data.job_type,
        data.priority.value,
    )
    stream = AttemptStream(
        running, deps, started, link.client, asked_of(data, hop.model), after=started_sent
    )
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
        deps.upstreams.failure(link, time.monotonic())
        deps.metrics.upstream_errors.labels(error.kind).inc()
        await stream.drain()
        return _Broke(error, stream, started)
    if end is None:
        await stream.drain()
        if running.cancel is None:
            assert running.preempted
            return await _preempted(running, deps, stream, hop, labels, on_interrupt)
        await publish_cancelled(deps, job, running.cancel, stream.streamed(), hop.upstream.name)
        deps.metrics.jobs_cancelled.labels(*labels).inc()
        deps.metrics.job_duration.labels("cancelled").observe(deps.clock() - started)
        return Outcome.CANCELLED
    deps.upstreams.success(link)
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
                response=stream.response(),
                finish_reason=end.finish_reason,
                model=end.model,
                upstream=hop.upstream.name,
                continues=continues,
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
        "attempt %d completed on %s: %d tokens in %.0f ms",
        data.attempt,
        hop.upstream.name,
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
