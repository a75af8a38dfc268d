"""Lifecycle facts on `streamjobs.events` and token chunks on `streamjobs.chunks`."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.contracts.envelope import Envelope
from shared.contracts.jobs import JobSpec


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True)


class TokenUsage(_Body):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int | None = Field(
        default=None, description="of prompt_tokens, those the upstream served from its cache"
    )
    reasoning_tokens: int | None = Field(
        default=None, description="of completion_tokens, those spent reasoning (not shown)"
    )


class JobAcceptedData(JobSpec):
    pass


class JobAccepted(Envelope):
    """The gateway queued the job."""

    type: Literal["job.accepted"] = "job.accepted"
    data: JobAcceptedData


class JobStartedData(_Body):
    attempt: int
    worker: str = Field(description="the streamer instance that runs this attempt")
    queued_for_ms: float | None = None
    upstream: str | None = Field(default=None, description="the upstream this attempt asks")
    model: str | None = Field(default=None, description="the model this attempt asks for")
    continues: int | None = Field(
        default=None,
        description="on_interrupt=continue: the attempt whose stream this one carries on; its"
        " chunks carry that attempt number and go on from its last seq",
    )


class JobStarted(Envelope):
    type: Literal["job.started"] = "job.started"
    data: JobStartedData


class JobRetryingData(_Body):
    attempt: int = Field(description="the attempt that failed")
    next_attempt: int
    reason: str
    retry_at: datetime
    upstream: str | None = Field(default=None, description="the upstream the attempt asked")
    model: str | None = Field(default=None, description="the model the attempt asked for")
    usage: TokenUsage | None = Field(
        default=None, description="tokens the failed attempt used (billed)"
    )
    usage_estimated: bool = False
    continues: int | None = None
    requeued: bool = Field(
        default=True,
        description="true: the next attempt was put on the retry topic; false: the same job"
        " record carries it, at once in the same slot (a fallback to the next upstream) or"
        " once a slot frees (preempted)",
    )
    preempted: bool = Field(
        default=False,
        description="the attempt was stopped for an urgent job, not failed; the next attempt"
        " waits for a slot in the same streamer",
    )


class JobRetrying(Envelope):
    type: Literal["job.retrying"] = "job.retrying"
    data: JobRetryingData


class ToolCallFunction(_Body):
    name: str
    arguments: str = Field(description="JSON text, as the model wrote it (not validated)")


class ToolCall(_Body):
    """One tool call of a completion, assembled from its streamed deltas."""

    id: str
    type: str = "function"
    function: ToolCallFunction


class ToolCallFunctionDelta(_Body):
    name: str | None = None
    arguments: str | None = Field(default=None, description="the next piece of the arguments")


class ToolCallDelta(_Body):
    """A piece of the tool call at `index`, in OpenAI's `delta.tool_calls[]` shape: the first
    piece of a call carries its id, type and function name; the next ones carry arguments."""

    index: int = Field(ge=0)
    id: str | None = None
    type: str | None = None
    function: ToolCallFunctionDelta | None = None


class JobCompletedData(_Body):
    attempt: int
    response: str
    finish_reason: str | None = None
    model: str
    upstream: str | None = Field(default=None, description="the upstream that served it")
    continues: int | None = Field(
        default=None, description="the attempt whose stream this one carried on (see JobStarted)"
    )
    usage: TokenUsage
    chunks: int = Field(description="number of chunk records of this attempt")
    last_seq: int
    time_to_first_token_ms: float | None = None
    duration_ms: float
    tool_calls: list[ToolCall] | None = Field(
        default=None, description="the tool calls the model made, assembled from the stream"
    )
    usage_estimated: bool = Field(
        default=False,
        description="true when the upstream reported no usage: tokens counted from the stream",
    )


class JobCompleted(Envelope):
    type: Literal["job.completed"] = "job.completed"
    data: JobCompletedData


class _StreamedSoFar(_Body):
    """What an attempt that ended short of completion had streamed (optional: older
    producers omit it), so its partial answer is kept and billed."""

    last_seq: int = -1
    model: str | None = None
    upstream: str | None = None
    continues: int | None = None
    usage: TokenUsage | None = Field(
        default=None, description="tokens of what was streamed; the upstream's when it sent them"
    )
    usage_estimated: bool = Field(
        default=False, description="true when usage was counted from the stream, not reported"
    )


class JobFailedData(_StreamedSoFar):
    attempt: int
    reason: str
    error_type: str
    retriable: bool = False


class JobFailed(Envelope):
    type: Literal["job.failed"] = "job.failed"
    data: JobFailedData


class JobCancelledData(_StreamedSoFar):
    attempt: int = 0
    reason: str = "cancelled by user"


class JobCancelled(Envelope):
    type: Literal["job.cancelled"] = "job.cancelled"
    data: JobCancelledData


class TokenChunkData(_Body):
    attempt: int
    seq: int = Field(ge=0, description="0, 1, 2… per (job, attempt); no gaps")
    text: str
    tokens: int = Field(ge=0, description="completion tokens in this chunk")
    first_token_at: datetime = Field(description="when the first token of this chunk arrived")
    emitted_at: datetime
    tool_calls: list[ToolCallDelta] | None = Field(
        default=None,
        description="tool-call deltas of this chunk, in stream order (text may be empty)",
    )


class TokenChunk(Envelope):
    """Record on `streamjobs.chunks`: coalesced tokens of one attempt."""

    type: Literal["job.chunk"] = "job.chunk"
    data: TokenChunkData
