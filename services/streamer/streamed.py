"""What an attempt had streamed when it ended short of completion: model, last seq, usage.

A cancelled or failed attempt may have cost tokens; its final event says how many, from
the upstream's own usage when the stream had sent it, otherwise counted by us.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.streamer.upstream import UpstreamUsage, messages_for
from shared.contracts import RunJobData, TokenUsage
from shared.contracts.chat import sent_text_chars
from shared.jobtypes import JobTypes

CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb for English text; an estimate, flagged as one


@dataclass(frozen=True, slots=True)
class Streamed:
    model: str
    last_seq: int
    usage: TokenUsage
    estimated: bool


def estimate_prompt_tokens(job: RunJobData, job_types: JobTypes) -> int:
    """Prompt tokens from the characters of every message sent (system prompt included)."""
    chars = sum(sent_text_chars(m) for m in messages_for(job, job_types))
    return math.ceil(chars / CHARS_PER_TOKEN)


def nothing_streamed(job: RunJobData) -> Streamed:
    """An attempt that never reached the upstream: nothing was asked, so nothing was used."""
    return Streamed(job.config.model, -1, TokenUsage(), estimated=False)


def streamed_so_far(
    job: RunJobData,
    *,
    model: str,
    last_seq: int,
    tokens: int,
    reported: UpstreamUsage | None,
    job_types: JobTypes,
) -> Streamed:
    """What a cut-short attempt streamed; `tokens` are those of the chunks published."""
    if reported is not None:
        usage = TokenUsage(
            prompt_tokens=reported.prompt_tokens,
            completion_tokens=reported.completion_tokens,
            total_tokens=reported.total_tokens,
            cached_tokens=reported.cached_tokens,
            reasoning_tokens=reported.reasoning_tokens,
        )
        return Streamed(model, last_seq, usage, estimated=False)
    prompt = estimate_prompt_tokens(job, job_types)
    usage = TokenUsage(prompt_tokens=prompt, completion_tokens=tokens, total_tokens=prompt + tokens)
    return Streamed(model, last_seq, usage, estimated=True)
