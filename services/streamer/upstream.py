"""The adapter to the LLM: one streamed chat completion via the openai SDK, faults as our errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import openai

from shared.contracts import RunJobData
from shared.jobtypes import JOB_TYPES


class UpstreamError(Exception):
    """A failed attempt at the upstream; `retriable` says whether another attempt may succeed."""

    retriable = True
    kind = "error"


class UpstreamRateLimited(UpstreamError):
    kind = "rate_limited"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamServerError(UpstreamError):
    kind = "server_error"


class UpstreamStreamCut(UpstreamError):
    kind = "stream_cut"


class UpstreamTimeout(UpstreamError):
    kind = "timeout"


class UpstreamRejected(UpstreamError):
    """The upstream refused the request itself (4xx): trying again would not help."""

    retriable = False
    kind = "rejected"


class InternalError(UpstreamError):
    """Our own code failed under the attempt: reported as a failure, not run again blindly."""

    retriable = False
    kind = "internal"


class AttemptsExhausted(UpstreamError):
    """Reruns after crashes used up every attempt before this one could start."""

    retriable = False
    kind = "attempts_exhausted"


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """What the stream said after its last token."""

    model: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True, slots=True)
class UpstreamModel:
    """The model the upstream says it streams with, when it differs from the one asked for."""

    model: str


@dataclass(frozen=True, slots=True)
class UpstreamUsage:
    """The usage the upstream reported, as soon as it did (before the stream's end)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def make_client(base_url: str, api_key: str, *, aiohttp_client: bool) -> openai.AsyncOpenAI:
    # Retries are ours (backoff, retry topic, breaker): the SDK must not retry on its own.
    http_client: Any = None
    if aiohttp_client and hasattr(openai, "DefaultAioHttpClient"):
        http_client = openai.DefaultAioHttpClient()
    return openai.AsyncOpenAI(
        base_url=base_url, api_key=api_key, max_retries=0, http_client=http_client
    )


def _retry_after(exc: openai.APIStatusError) -> float | None:
    headers = exc.response.headers
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return float(value) / scale
            except ValueError:
                continue
    return None


def classify(exc: openai.OpenAIError) -> UpstreamError:
    """Map an SDK error to ours."""
    if isinstance(exc, openai.RateLimitError):
        return UpstreamRateLimited(str(exc), _retry_after(exc))
    if isinstance(exc, openai.APITimeoutError):
        return UpstreamTimeout(str(exc))
    if isinstance(exc, openai.APIConnectionError):
        return UpstreamStreamCut(str(exc))
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code >= 500 or exc.status_code in (408, 409):
            return UpstreamServerError(f"{exc.status_code}: {exc}")
        return UpstreamRejected(f"{exc.status_code}: {exc}")
    return UpstreamServerError(str(exc))


def messages_for(job: RunJobData) -> list[Any]:
    job_type = JOB_TYPES.get(job.job_type)
    messages: list[Any] = []
    if job_type is not None:
        messages.append({"role": "system", "content": job_type.system_prompt})
    messages.append({"role": "user", "content": job.prompt})
    return messages


async def stream_tokens(
    client: openai.AsyncOpenAI, job: RunJobData
) -> AsyncIterator[str | StreamEnd | UpstreamModel | UpstreamUsage]:
    """Yield each content delta, then one `StreamEnd`; raises `UpstreamError`.

    The model (when it differs from the one asked for) and the usage are also yielded
    as they arrive, once each, so an attempt cut short can still report them.

    Closing the generator (task cancelled) closes the HTTP stream at once.
    """
    config = job.config
    extra: dict[str, Any] = {}
    if config.top_p is not None:
        extra["top_p"] = config.top_p
    if config.seed is not None:
        extra["seed"] = config.seed
    job_type = JOB_TYPES.get(job.job_type)
    response_format = job_type.response_format() if job_type is not None else None
    if response_format is not None:
        extra["response_format"] = response_format  # structured output of the type's schema
    model = config.model
    finish_reason: str | None = None
    usage: Any = None
    completion = 0
    try:
        stream = await client.chat.completions.create(
            model=config.model,
            messages=messages_for(job),
            max_tokens=config.max_tokens,
            temperature=config.temperature,
            stream=True,
            stream_options={"include_usage": True},
            **extra,
        )
        async with stream:
            async for chunk in stream:
                if chunk.model and chunk.model != model:
                    model = chunk.model
                    yield UpstreamModel(model)
                if chunk.usage is not None:
                    usage = chunk.usage
                    yield UpstreamUsage(
                        usage.prompt_tokens, usage.completion_tokens, usage.total_tokens
                    )
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                text = choice.delta.content
                if text:
                    completion += 1
                    yield text
                if choice.finish_reason is not None:
                    finish_reason = choice.finish_reason
    except openai.OpenAIError as exc:
        raise classify(exc) from exc
    if finish_reason is None:
        # The body ended without a finish reason: the stream was cut.
        raise UpstreamStreamCut("stream ended without a finish reason")
    if usage is not None:
        yield StreamEnd(
            model,
            finish_reason,
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens,
        )
    else:
        yield StreamEnd(model, finish_reason, 0, completion, completion)
