"""The bodies of the OpenAI-compatible routes as the OpenAPI document describes them.

The request is read by `openai_request.read_request` into a `JobSubmission` (so it is
validated exactly as `POST /api/v1/jobs` is); these models document the shapes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class StreamOptions(BaseModel):
    include_usage: bool = Field(default=False, description="a last chunk with `usage`")


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion request. Besides these, every field of a job's `config`
    (`max_tokens`, `max_completion_tokens`, `temperature`, `top_p`, `seed`, `stop`,
    `response_format`, `tools`, `tool_choice`, …) at the top level, as OpenAI takes them."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="a model of GET /v1/models")
    messages: list[dict[str, Any]] = Field(min_length=1, description="the conversation")
    stream: bool = Field(default=False, description="answer chat.completion.chunk events")
    stream_options: StreamOptions | None = None
    metadata: dict[str, str] | None = Field(
        default=None,
        description="stored with the job; `streamjobs_priority`, `streamjobs_job_type`,"
        " `streamjobs_idempotency_key` and `streamjobs_on_interrupt` set those (the headers"
        " win) and are not stored",
    )


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


CHUNK_STREAM_SCHEMA: dict[str, Any] = {
    "type": "string",
    "description": "`data: {chat.completion.chunk}` events, each with an `id:` (also the"
    " chunk's `event_id`) to resume after, ending `data: [DONE]`; a failure is a"
    ' `data: {"error": {...}}` event',
}
