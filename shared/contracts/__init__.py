"""Typed records of every topic, and one parser that reads any of them."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, TypeAdapter

from shared.contracts.chat import (
    CHAT_OPTION_FIELDS,
    AssistantMessage,
    ChatMessage,
    ChatOptions,
    DeveloperMessage,
    FunctionTool,
    ImagePart,
    MessageToolCall,
    SystemMessage,
    TextPart,
    ToolMessage,
    UserMessage,
)
from shared.contracts.envelope import Envelope, new_trace_id, utcnow
from shared.contracts.events import (
    JobAccepted,
    JobAcceptedData,
    JobCancelled,
    JobCancelledData,
    JobCompleted,
    JobCompletedData,
    JobFailed,
    JobFailedData,
    JobRetrying,
    JobRetryingData,
    JobStarted,
    JobStartedData,
    TokenChunk,
    TokenChunkData,
    TokenUsage,
    ToolCall,
    ToolCallDelta,
    ToolCallFunction,
    ToolCallFunctionDelta,
)
from shared.contracts.jobs import (
    CancelJob,
    CancelJobData,
    DeadLetterData,
    JobDeadLettered,
    JobSpec,
    ModelConfig,
    ResumeFrom,
    RunJob,
    RunJobData,
)
from shared.contracts.webhooks import WebhookDelivery, WebhookDeliveryData

LifecycleEvent = JobAccepted | JobStarted | JobRetrying | JobCompleted | JobFailed | JobCancelled
# The same types as a tuple, for isinstance checks on a parsed record.
LIFECYCLE_TYPES = (JobAccepted, JobStarted, JobRetrying, JobCompleted, JobFailed, JobCancelled)
AnyRecord = Annotated[
    RunJob
    | CancelJob
    | JobDeadLettered
    | JobAccepted
    | JobStarted
    | JobRetrying
    | JobCompleted
    | JobFailed
    | JobCancelled
    | TokenChunk
    | WebhookDelivery,
    Field(discriminator="type"),
]

RECORD_TYPES: dict[str, type[Envelope]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        RunJob,
        CancelJob,
        JobDeadLettered,
        JobAccepted,
        JobStarted,
        JobRetrying,
        JobCompleted,
        JobFailed,
        JobCancelled,
        TokenChunk,
        WebhookDelivery,
    )
}

_ANY = TypeAdapter[AnyRecord](AnyRecord)


def parse_record(raw: bytes | str) -> AnyRecord:
    """Parse and validate any streamjobs record; raises `pydantic.ValidationError`."""
    return _ANY.validate_json(raw)


__all__ = [
    "CHAT_OPTION_FIELDS",
    "LIFECYCLE_TYPES",
    "RECORD_TYPES",
    "AnyRecord",
    "AssistantMessage",
    "CancelJob",
    "CancelJobData",
    "ChatMessage",
    "ChatOptions",
    "DeadLetterData",
    "DeveloperMessage",
    "Envelope",
    "FunctionTool",
    "ImagePart",
    "JobAccepted",
    "JobAcceptedData",
    "JobCancelled",
    "JobCancelledData",
    "JobCompleted",
    "JobCompletedData",
    "JobDeadLettered",
    "JobFailed",
    "JobFailedData",
    "JobRetrying",
    "JobRetryingData",
    "JobSpec",
    "JobStarted",
    "JobStartedData",
    "LifecycleEvent",
    "MessageToolCall",
    "ModelConfig",
    "ResumeFrom",
    "RunJob",
    "RunJobData",
    "SystemMessage",
    "TextPart",
    "TokenChunk",
    "TokenChunkData",
    "TokenUsage",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallFunction",
    "ToolCallFunctionDelta",
    "ToolMessage",
    "UserMessage",
    "WebhookDelivery",
    "WebhookDeliveryData",
    "new_trace_id",
    "parse_record",
    "utcnow",
]
