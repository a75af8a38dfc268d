"""OpenAI chat messages and the request fields that shape a completion, as a job carries them.

The shapes follow OpenAI's chat completions API, so a job's messages and options are sent
upstream as given. Unknown keys are refused rather than dropped: a field a user set and we
did not send would change the answer without telling anyone.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict

# OpenAI's own bounds: a function or schema name, four stop sequences, 128 tools.
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MAX_STOP = 4
MAX_TOOLS = 128
MAX_OUTPUT_TOKENS = 32_768
ROLES = ("system", "developer", "user", "assistant", "tool")
INSTRUCTION_ROLES = frozenset({"system", "developer"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TextPart(_Model):
    type: Literal["text"]
    text: str


class ImageUrl(_Model):
    url: str = Field(min_length=1, description="an http(s) URL or a base64 `data:` URL")
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Model):
    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]
TextContent = str | Annotated[list[TextPart], Field(min_length=1)]
UserContent = str | Annotated[list[ContentPart], Field(min_length=1)]


class MessageFunctionCall(_Model):
    name: str
    arguments: str = Field(description="the arguments as the model wrote them: JSON text")


class MessageToolCall(_Model):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: MessageFunctionCall


class SystemMessage(_Model):
    role: Literal["system"]
    content: TextContent
    name: str | None = None


class DeveloperMessage(_Model):
    role: Literal["developer"]
    content: TextContent
    name: str | None = None


class UserMessage(_Model):
    role: Literal["user"]
    content: UserContent
    name: str | None = None


class AssistantMessage(_Model):
    role: Literal["assistant"]
    content: TextContent | None = None
    tool_calls: Annotated[list[MessageToolCall], Field(min_length=1)] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _says_something(self) -> AssistantMessage:
        if self.content is None and self.tool_calls is None:
            raise ValueError("an assistant message needs content or tool_calls")
        return self


class ToolMessage(_Model):
    role: Literal["tool"]
    content: TextContent
    tool_call_id: str = Field(min_length=1, description="the `id` of the call this answers")


ChatMessage = Annotated[
    SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage,
    Field(discriminator="role"),
]


class FunctionDefinition(_Model):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="the arguments' JSON schema"
    )
    strict: bool | None = None


class FunctionTool(_Model):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Model):
    name: str = Field(pattern=NAME_PATTERN)


class NamedToolChoice(_Model):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


@with_config(ConfigDict(extra="forbid"))
class JsonSchemaFormat(TypedDict):
    """`response_format.json_schema`; a TypedDict, as a model may not name a field `schema`."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    description: NotRequired[str]
    schema: NotRequired[dict[str, Any]]
    strict: NotRequired[bool]


class TextResponseFormat(_Model):
    type: Literal["text"]


class JsonObjectResponseFormat(_Model):
    type: Literal["json_object"]


class JsonSchemaResponseFormat(_Model):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[
    TextResponseFormat | JsonObjectResponseFormat | JsonSchemaResponseFormat,
    Field(discriminator="type"),
]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
LogitBias = dict[
    Annotated[str, Field(pattern=r"^[0-9]{1,10}$")], Annotated[int, Field(ge=-100, le=100)]
]


class ChatOptions(_Model):
    """The chat completions fields beyond schema 1's `ModelConfig`, each sent only when set."""

    stop: str | Annotated[list[str], Field(min_length=1, max_length=MAX_STOP)] | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[FunctionTool], Field(min_length=1, max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: LogitBias | None = Field(
        default=None, description="token id (as a string) -> bias from -100 to 100"
    )
    user: str | None = Field(
        default=None, max_length=256, description="the end user, for abuse checks"
    )
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_OUTPUT_TOKENS)
    n: int | None = Field(default=None, description="accepted only as 1: a job is one stream")

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int | None) -> int | None:
        if n is not None and n != 1:
            raise ValueError("n is not supported above 1: a job streams exactly one choice")
        return n

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self) -> ChatOptions:
        choice = self.tool_choice
        if choice is None or choice == "none":
            return self
        names = {t.function.name for t in self.tools or ()}
        if not names:
            raise ValueError("tool_choice needs tools")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ValueError(f"tool_choice names {choice.function.name!r}, which is not in tools")
        return self


CHAT_OPTION_FIELDS: tuple[str, ...] = tuple(ChatOptions.model_fields)


def message_text(content: str | list[Any] | None) -> str:
    """The text of a message's content: a string, or its text parts joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content if isinstance(part, TextPart))


def sent_text_chars(message: dict[str, Any]) -> int:
    """Characters of text in one message as sent upstream (a dict): its content's text
    (images have none) and its tool calls' arguments."""
    content = message.get("content")
    chars = 0
    if isinstance(content, str):
        chars = len(content)
    elif isinstance(content, list):
        chars = sum(len(p.get("text") or "") for p in content if isinstance(p, dict))
    for call in message.get("tool_calls") or ():
        chars += len(call.get("function", {}).get("arguments") or "")
    return chars


def text_chars(messages: list[Any]) -> int:
    """Characters of every text a list of messages holds: contents and tool-call arguments."""
    total = 0
    for message in messages:
        total += len(message_text(message.content))
        for call in getattr(message, "tool_calls", None) or ():
            total += len(call.function.arguments)
    return total


def last_user_text(messages: list[Any]) -> str:
    """The text of the last user message ("" without one): a messages job's `prompt`."""
    for message in reversed(messages):
        if message.role == "user":
            return message_text(message.content)
    return ""


def has_instructions(messages: list[Any]) -> bool:
    """Whether the messages carry a system or developer message of their own."""
    return any(m.role in INSTRUCTION_ROLES for m in messages)
