"""Commands on the job topics and the control topic: run a job, cancel a job."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.contracts.chat import ChatMessage, ChatOptions
from shared.contracts.envelope import Envelope
from shared.topics import Priority


class ModelConfig(BaseModel):
    """What the LLM is asked to do; every field the OpenAI chat API shares."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = "gpt-4o-mini"
    max_tokens: int = Field(default=512, ge=1, le=32_768)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None


class JobSpec(BaseModel):
    """A job as the user asked for it: a `prompt`, or chat `messages`.

    Schema 1 consumers require `prompt` and refuse unknown `config` keys, so a messages job
    still carries a `prompt` (the text of its last user message, never sent upstream when
    `messages` is set), and the request fields newer than schema 1 travel in `options`.
    """

    model_config = ConfigDict(frozen=True)

    user_id: str
    prompt: str = Field(
        default="", description="the user message; with `messages`: their last user text"
    )
    job_type: str
    priority: Priority
    config: ModelConfig
    metadata: dict[str, Any] = Field(default_factory=dict)
    messages: list[ChatMessage] | None = Field(
        default=None, description="the conversation sent upstream as given, in place of `prompt`"
    )
    options: ChatOptions | None = Field(
        default=None, description="the chat completions fields set beyond `config`"
    )
    submitted_at: datetime
    on_interrupt: Literal["restart", "continue"] | None = Field(
        default=None,
        description="what follows an attempt cut after streaming text: restart the answer, or"
        " continue it from the text so far; None: the model's default, then restart",
    )
    retry_of: str | None = Field(
        default=None, description="the failed or cancelled job this one runs again, if any"
    )
    webhook_url: str | None = Field(
        default=None,
        description="where the job's final event is POSTed (signed, Standard Webhooks); set"
        " at submission, or the user's default",
    )

    @model_validator(mode="after")
    def _asks_something(self) -> JobSpec:
        if self.messages is not None and not self.messages:
            raise ValueError("messages, when given, must not be empty")
        return self


class ResumeFrom(BaseModel):
    """What a continuing attempt carries on: the stream's attempt, its text, its next seq."""

    model_config = ConfigDict(frozen=True)

    attempt: int = Field(ge=1, description="the attempt whose chunks the stream carries")
    text: str = Field(description="the answer streamed so far")
    next_seq: int = Field(ge=0, description="the seq the continuation's first chunk takes")
    tokens: int = Field(default=0, ge=0, description="completion tokens streamed so far")


class RunJobData(JobSpec):
    attempt: int = Field(default=1, ge=1, description="1 for the first run, +1 per retry")
    not_before: datetime | None = Field(
        default=None, description="retry topic only: do not start before this time"
    )
    accept_by: datetime | None = Field(
        default=None,
        description="attempt 1: the gateway gave up on this record at this time; appended"
        " by the broker later than that (LogAppendTime), it is not run",
    )
    resume: ResumeFrom | None = Field(
        default=None, description="on_interrupt=continue: the stream this attempt carries on"
    )


class RunJob(Envelope):
    """Command on `streamjobs.jobs.{band}` (and `.retry`): stream this job."""

    type: Literal["job.run"] = "job.run"
    data: RunJobData


class CancelJobData(BaseModel):
    model_config = ConfigDict(frozen=True)

    user_id: str = Field(description="who asked; a streamer obeys only the job's owner or an admin")
    admin: bool = False
    reason: str = "cancelled by user"


class CancelJob(Envelope):
    """Command on `streamjobs.control`: stop this job, queued or running."""

    type: Literal["job.cancel"] = "job.cancel"
    data: CancelJobData


class DeadLetterData(BaseModel):
    model_config = ConfigDict(frozen=True)

    reason: str
    error_type: str
    source_topic: str
    source_partition: int | None = None
    source_offset: int | None = None
    attempts: int = 0
    original: str = Field(description="the original record value, decoded as UTF-8 (lossy)")


class JobDeadLettered(Envelope):
    """Record on `streamjobs.jobs.dlq`: a job or record that failed for good, and why."""

    type: Literal["job.dead_lettered"] = "job.dead_lettered"
    data: DeadLetterData
