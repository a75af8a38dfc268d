"""The adapter to the LLM: one streamed chat completion via the openai SDK, faults as our errors."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx2
import openai

from services.streamer.sse import MalformedEvent, SSEReader, StreamedError, ToolCallDeltas
from services.streamer.sse import UpstreamModel as UpstreamModel  # part of this adapter's API
from services.streamer.sse import UpstreamUsage as UpstreamUsage
from shared.contracts import RunJobData
from shared.contracts.chat import has_instructions
from shared.jobtypes import JobTypes


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
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None


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


def messages_for(job: RunJobData, job_types: JobTypes) -> list[Any]:
    """The messages sent: a messages job's as given, else its prompt as one user message.

    The job type's system prompt (if it has one) comes first unless the messages carry a system or
    developer message of their own: the user's instructions are not overruled by ours.
    """
    job_type = job_types.get(job.job_type)
    messages: list[Any] = []
    if (
        job_type is not None
        and job_type.system_prompt
        and (job.messages is None or not has_instructions(job.messages))
    ):
        messages.append({"role": "system", "content": job_type.system_prompt})
    if job.messages is None:
        messages.append({"role": "user", "content": job.prompt})
    else:
        messages.extend(m.model_dump(exclude_none=True) for m in job.messages)
    return messages


def request_for(job: RunJobData, job_types: JobTypes) -> dict[str, Any]:
    """The chat completion request of one attempt, streamed with its usage; the fields the
    job left unset are not sent."""
    config = job.config
    request: dict[str, Any] = {
        "model": config.model,
        "messages": messages_for(job, job_types),
        "max_tokens": config.max_tokens,
        "temperature": config.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if config.top_p is not None:
        request["top_p"] = config.top_p
    if config.seed is not None:
        request["seed"] = config.seed
    if job.options is not None:
        request.update(job.options.model_dump(exclude_none=True))
        if "max_completion_tokens" in request:
            # The newer name of the same bound: OpenAI refuses a request that sends both.
            del request["max_tokens"]
    job_type = job_types.get(job.job_type)
    response_format = job_type.response_format() if job_type is not None else None
    if response_format is not None:
        request["response_format"] = response_format  # structured output of the type's schema
    return request


CHAT_COMPLETIONS = "/chat/completions"
# What the SDK's own stream maps to APITimeoutError and APIConnectionError while reading.
_TIMEOUTS = (httpx2.TimeoutException,)
_CUTS = (httpx2.RequestError, ssl.SSLError)
# After [DONE], how long the rest of an HTTP/1.1 body may take: read to its end, the
# connection is reused; a server that keeps it open past this is not waited for.
DRAIN_S = 0.1


async def stream_tokens(
    client: openai.AsyncOpenAI,
    job: RunJobData,
    job_types: JobTypes,
    request: dict[str, Any] | None = None,
) -> AsyncIterator[str | ToolCallDeltas | StreamEnd | UpstreamModel | UpstreamUsage]:
    """Yield each content delta and tool-call deltas, then one `StreamEnd`; raises
    `UpstreamError`. Without a usage from the upstream, the end counts the deltas.

    The model (when it differs from the one asked for) and the usage are also yielded
    as they arrive, once each, so an attempt cut short can still report them.

    The SDK sends the request (base URL, auth, headers, timeouts, status errors) through
    its generic `post`, with the body `request_for` built: the typed `create` first walks
    every parameter through its TypedDict transform, ~0.8 ms of CPU per request for a body
    that needs none. The answer is read as bytes and parsed here, without a model object
    per chunk. Closing the generator (task cancelled) closes the HTTP stream at once.
    """
    reader = SSEReader(job.config.model)
    try:
        response = await client.post(
            CHAT_COMPLETIONS,
            body=request if request is not None else request_for(job, job_types),
            cast_to=httpx2.Response,
            stream=True,
            stream_cls=None,
        )
        body = response.aiter_bytes()
        try:
            async for data in body:
                for item in reader.feed(data):
                    yield item
                if reader.done:
                    break
            for item in reader.end():
                yield item
            if reader.done:
                with contextlib.suppress(TimeoutError, *_TIMEOUTS, *_CUTS):
                    async with asyncio.timeout(DRAIN_S):
                        async for _ in body:
                            pass
        except _TIMEOUTS as exc:
            raise classify(openai.APITimeoutError(request=response.request)) from exc
        except _CUTS as exc:
            raise classify(openai.APIConnectionError(request=response.request)) from exc
        except StreamedError as exc:
            error = openai.APIError(str(exc), response.request, body=exc.body)
            raise classify(error) from exc
        except MalformedEvent as exc:
            raise UpstreamServerError(str(exc)) from exc
        finally:
            await body.aclose()
            await response.aclose()
    except openai.OpenAIError as exc:
        raise classify(exc) from exc
    if reader.finish_reason is None:
        # The body ended without a finish reason: the stream was cut.
        raise UpstreamStreamCut("stream ended without a finish reason")
    usage = reader.usage
    if usage is not None:
        yield StreamEnd(
            reader.model,
            reader.finish_reason,
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens,
            usage.cached_tokens,
            usage.reasoning_tokens,
        )
    else:
        yield StreamEnd(reader.model, reader.finish_reason, 0, reader.tokens, reader.tokens)
