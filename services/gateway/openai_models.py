"""The bodies of the OpenAI-compatible routes and their answers, as the OpenAPI document
describes them (the route table in routes.py takes its replies and headers from here).

The request is read by `openai_request.read_request` into a `JobSubmission` (so it is
validated exactly as `POST /api/v1/jobs` is); these models document the shapes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.gateway.openai_chunks import CURSOR_PATTERN
from services.gateway.openai_request import (
    HEADER_JOB_TYPE,
    HEADER_ON_INTERRUPT,
    HEADER_PRIORITY,
)
from shared.api import RequestConfig
from shared.contracts import ChatMessage
from shared.http import Reply


class StreamOptions(BaseModel):
    include_usage: bool = Field(default=False, description="a last chunk with `usage`")


class ChatCompletionRequest(RequestConfig):
    """OpenAI's chat completion request: `model`, `messages`, and every field of a job's
    `config` at the top level, as OpenAI takes them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, description="a model of GET /v1/models")  # required
    messages: list[ChatMessage] = Field(min_length=1, description="the conversation")
    stream: bool = Field(default=False, description="answer chat.completion.chunk events")
    stream_options: StreamOptions | None = None
    metadata: dict[str, str] | None = Field(
        default=None,
        description="stored with the job; `streamjobs_priority`, `streamjobs_job_type`,"
        " `streamjobs_idempotency_key` and `streamjobs_on_interrupt` set those (the headers"
        " win) and are not stored",
    )
    store: bool | None = Field(default=None, description="accepted, and ignored")


class CompletionQuery(BaseModel):
    """`GET /v1/chat/completions/{job_id}`: the answer, or its stream resumed."""

    stream: bool = Field(default=False, description="the job's chunks as server-sent events")
    starting_after: str | None = Field(
        default=None,
        pattern=CURSOR_PATTERN,
        description="an event id (`event_id` of a chunk): go on right after it; or send"
        " Last-Event-ID",
    )
    include_usage: bool = Field(default=False, description="end with the usage chunk")


class CompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class Choice(BaseModel):
    index: int = 0
    message: CompletionMessage
    finish_reason: str
    logprobs: None = None


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None
    completion_tokens_details: dict[str, int] | None = None


class ChatCompletion(BaseModel):
    """The job's stored result as OpenAI's `chat.completion`; `id` is the job id."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "streamjobs"


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """Every refusal under /v1: OpenAI's error object."""

    error: OpenAIErrorDetail


STREAM_DESCRIPTION = (
    "`data: {chat.completion.chunk}` events, each with an `id:` (also the chunk's `event_id`)"
    ' to resume after, ending `data: [DONE]`; a failure is a `data: {"error": {...}}` event'
)

# What the route table says of the completion routes' answers and headers.
COMPLETION_REPLY = Reply(
    200,
    "a chat.completion; with stream true, text/event-stream: " + STREAM_DESCRIPTION,
    ChatCompletion,
)
OPENAI_ERROR_REPLIES = tuple(
    Reply(code, what, OpenAIError)
    for code, what in (
        (400, "Invalid request, unknown parameter, failed job (the upstream refused it)"),
        (401, "No or bad API key (token)"),
        (403, "The token lacks the scope"),
        (404, "Unknown model or job"),
        (409, "The job was cancelled"),
        (429, "A rate limit or the live streams' bound; see Retry-After"),
        (502, "The job failed at its upstream"),
        (503, "Kafka, the read side or the notifier unavailable; see Retry-After"),
        (504, "Not finished within GATEWAY_OPENAI_WAIT_S (the job goes on)"),
    )
)
COMPLETION_HEADERS: tuple[dict[str, Any], ...] = tuple(
    {
        "name": name,
        "in": "header",
        "required": False,
        "description": what,
        "schema": {"type": "string"},
    }
    for name, what in (
        (HEADER_PRIORITY, "urgent, high, normal, low (or metadata.streamjobs_priority)"),
        (HEADER_JOB_TYPE, "a job type (or metadata.streamjobs_job_type)"),
        (HEADER_ON_INTERRUPT, "restart or continue (or metadata.streamjobs_on_interrupt)"),
    )
)
