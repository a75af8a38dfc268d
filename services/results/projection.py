"""How lifecycle events change a stored job, and what a completion stores: no I/O here.

Events reach us at least once, in order per job on the events topic, except that
`job.accepted` (another producer) may come at any point. Whatever order, the
state machine in `shared.lifecycle` decides; a move it forbids is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from shared.contracts import (
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobRetrying,
    JobStarted,
    LifecycleEvent,
    TokenUsage,
)
from shared.jobtypes import JobTypes
from shared.lifecycle import IllegalTransition, JobStatus, next_status
from shared.prices import Price, Prices, Usage, cost_usd


def aware(moment: datetime) -> datetime:
    """Timestamps without an offset are taken as UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass
class JobRow:
    """One row of `jobs`, as it is read and written."""

    job_id: str
    status: JobStatus | None = None  # None: nothing applied yet (a new row)
    user_id: str | None = None
    job_type: str | None = None
    priority: str | None = None
    prompt: str | None = None
    config: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    attempt: int = 0
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    attempt_started_at: datetime | None = None
    first_token_at: datetime | None = None
    finished_at: datetime | None = None
    queue_wait_ms: float | None = None
    error_reason: str | None = None
    error_type: str | None = None
    messages: list[dict[str, Any]] | None = None
    retry_of: str | None = None


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One row of `results`, written when a job completed."""

    job_id: str
    attempt: int
    model: str
    response: str
    parsed_response: Any
    parse_error: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated_cost_usd: Decimal | None  # None: the workload file prices the model nowhere
    processing_time_ms: float | None
    ttft_ms: float | None
    tokens_per_second: float | None
    queue_wait_ms: float | None
    chunks: int
    severity_breakdown: dict[str, int] | None
    completed_at: datetime
    usage_estimated: bool = False
    tool_calls: list[dict[str, Any]] | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    breakdown: dict[str, dict[str, int]] | None = None


@dataclass(frozen=True, slots=True)
class Rules:
    """What a stored result is read by: the workload file's job types and prices."""

    job_types: JobTypes
    prices: Prices

    def price_of(self, model: str | None, upstream: str | None = None) -> Price | None:
        """The model's price on the upstream that served it (its own price when the
        upstream has none, or older events name no upstream)."""
        return self.prices.price_of(model, upstream)


def _queue_wait(job: JobRow, queued_for_ms: float | None = None) -> None:
    if job.queue_wait_ms is not None:
        return
    if queued_for_ms is not None:
        job.queue_wait_ms = queued_for_ms
    elif job.started_at is not None and job.submitted_at is not None:
        job.queue_wait_ms = max(0.0, (job.started_at - job.submitted_at).total_seconds() * 1000)


def owner_conflict(job: JobRow, event: LifecycleEvent) -> bool:
    """`event` is an accepted fact naming another owner than the job's first one."""
    return (
        isinstance(event, JobAccepted)
        and job.user_id is not None
        and event.data.user_id != job.user_id
    )


def apply(job: JobRow, event: LifecycleEvent) -> bool:
    """Apply `event` to `job` in place; False when it is an illegal or out-of-date move."""
    if isinstance(event, JobAccepted):
        if owner_conflict(job, event):
            # The first accepted fact fixed the owner; a later one may not hand the job over.
            return False
        spec = event.data
        job.user_id = spec.user_id
        job.job_type = spec.job_type
        job.priority = spec.priority.value
        # What was asked: a messages job's prompt is only its last user text, not stored.
        job.prompt = spec.prompt if spec.messages is None else None
        job.messages = (
            None
            if spec.messages is None
            else [m.model_dump(mode="json", exclude_none=True) for m in spec.messages]
        )
        job.config = spec.config.model_dump(mode="json")
        if spec.options is not None:
            job.config.update(spec.options.model_dump(mode="json", exclude_none=True))
        job.metadata = dict(spec.metadata)
        job.retry_of = spec.retry_of
        job.model = job.model or spec.config.model
        job.submitted_at = aware(spec.submitted_at)
        job.status = next_status(job.status, event.type)
        _queue_wait(job)
        return True
    attempt = event.data.attempt
    if isinstance(event, JobStarted | JobRetrying) and attempt < job.attempt:
        return False  # an earlier attempt's news, after a later attempt began
    try:
        target = next_status(job.status, event.type)
    except IllegalTransition:
        return False
    job.status = target
    at = aware(event.occurred_at)
    if isinstance(event, JobStarted):
        if attempt > job.attempt:
            job.first_token_at = None
        job.attempt = attempt
        job.attempt_started_at = at
        job.error_reason = job.error_type = None
        if job.started_at is None:
            job.started_at = at
            _queue_wait(job, event.data.queued_for_ms if attempt == 1 else None)
    elif isinstance(event, JobRetrying):
        job.attempt = attempt
        job.error_reason = event.data.reason
    elif isinstance(event, JobCompleted):
        data = event.data
        job.attempt = max(job.attempt, attempt)
        job.model = data.model
        job.finished_at = at
        job.error_reason = job.error_type = None
        if data.time_to_first_token_ms is not None and job.attempt_started_at is not None:
            job.first_token_at = job.first_token_at or job.attempt_started_at + _ms(
                data.time_to_first_token_ms
            )
    elif isinstance(event, JobFailed):
        job.attempt = max(job.attempt, attempt)
        job.finished_at = at
        job.error_reason = event.data.reason
        job.error_type = event.data.error_type
    elif isinstance(event, JobCancelled):
        job.attempt = max(job.attempt, attempt)
        job.finished_at = at
        job.error_reason = event.data.reason
        job.error_type = "cancelled"
    return True


def _ms(value: float) -> timedelta:
    return timedelta(milliseconds=value)


def cost_of(price: Price | None, usage: TokenUsage) -> Decimal | None:
    """What `usage` cost at `price`; None when the model has no price."""
    if price is None:
        return None
    return cost_usd(
        price,
        Usage(
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cached_tokens,
            usage.reasoning_tokens,
        ),
    )


def tokens_per_second(completion_tokens: int, duration_ms: float, ttft_ms: float | None) -> float:
    """Generation speed: completion tokens over the time after the first token (or all of it)."""
    span_ms = (
        duration_ms - ttft_ms if ttft_ms is not None and duration_ms > ttft_ms else duration_ms
    )
    return completion_tokens / (span_ms / 1000) if span_ms > 0 else 0.0


def result_of(job: JobRow, event: JobCompleted, rules: Rules) -> ResultRow:
    data = event.data
    parsed = rules.job_types.parse_response(job.job_type or "", data.response)
    return ResultRow(
        job_id=event.job_id,
        attempt=data.attempt,
        model=data.model,
        response=data.response,
        parsed_response=parsed.value,
        parse_error=parsed.error,
        finish_reason=data.finish_reason,
        prompt_tokens=data.usage.prompt_tokens,
        completion_tokens=data.usage.completion_tokens,
        total_tokens=data.usage.total_tokens,
        estimated_cost_usd=cost_of(rules.price_of(data.model, data.upstream), data.usage),
        processing_time_ms=data.duration_ms,
        ttft_ms=data.time_to_first_token_ms,
        tokens_per_second=tokens_per_second(
            data.usage.completion_tokens, data.duration_ms, data.time_to_first_token_ms
        ),
        queue_wait_ms=job.queue_wait_ms,
        chunks=data.chunks,
        severity_breakdown=parsed.severity_breakdown,
        completed_at=aware(event.occurred_at),
        usage_estimated=data.usage_estimated,
        tool_calls=[c.model_dump() for c in data.tool_calls] if data.tool_calls else None,
        cached_tokens=data.usage.cached_tokens,
        reasoning_tokens=data.usage.reasoning_tokens,
        breakdown=parsed.breakdown,
    )


@dataclass(frozen=True, slots=True)
class Streamed:
    """The stored chunks of one attempt: their text in seq order, tokens and count."""

    text: str = ""
    tokens: int = 0
    chunks: int = 0


def partial_result_of(
    job: JobRow, event: JobFailed | JobCancelled, streamed: Streamed, price: Price | None
) -> ResultRow:
    """What a failed or cancelled attempt streamed before it ended, and what that cost.

    Usage is the event's when it carries one (the streamer's, estimated or not); else the
    completion tokens are counted from the stored chunks and marked estimated. Latency
    figures stay empty: they describe completions.
    """
    data = event.data
    usage = data.usage
    if usage is not None:
        prompt, completion, estimated = (
            usage.prompt_tokens,
            usage.completion_tokens,
            data.usage_estimated,
        )
    else:
        prompt, completion, estimated = 0, streamed.tokens, True
        usage = TokenUsage(completion_tokens=completion, total_tokens=completion)
    model = data.model or job.model or ""
    return ResultRow(
        job_id=event.job_id,
        attempt=data.attempt,
        model=model,
        response=streamed.text,
        parsed_response=None,
        parse_error=None,
        finish_reason=None,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=usage.total_tokens or prompt + completion,
        estimated_cost_usd=cost_of(price, usage),
        processing_time_ms=None,
        ttft_ms=None,
        tokens_per_second=None,
        queue_wait_ms=job.queue_wait_ms,
        chunks=streamed.chunks,
        severity_breakdown=None,
        completed_at=aware(event.occurred_at),
        usage_estimated=estimated,
        cached_tokens=usage.cached_tokens,
        reasoning_tokens=usage.reasoning_tokens,
    )
