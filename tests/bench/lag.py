"""What a user sees, against the upstream read directly: added time to first token, token lag.

Times are epoch seconds on this machine's clock (the streamer's included). A stream is
the receipt time of each token, by index. For the pipeline, a chunk's receipt is the
receipt of every token it carries. The direct reader's times are what the simulator's
schedule gave; the simulator is deterministic, so the pipeline's request of the same
prompt gets the same schedule. The start of a stream counts in the added time to first
token; token lag is the rest: how far each token falls behind the upstream's spacing
from the moment the streamer had the first token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


def token_times(chunks: Sequence[tuple[float, int]]) -> list[float]:
    """(receipt time, tokens in the chunk) in seq order -> receipt time per token index."""
    out: list[float] = []
    for received, tokens in chunks:
        out.extend([received] * tokens)
    return out


@dataclass
class DirectStream:
    """One stream read straight from the simulator."""

    requested: float
    tokens: list[float] = field(default_factory=list)


@dataclass
class UserStream:
    """One job as a user saw it: submitted, started by the streamer, chunks received."""

    submitted: float
    accepted: float | None = None  # when the 202 came back
    started: float | None = None  # occurred_at of the attempt's job.started: its slot given
    first_emitted: float | None = None  # emitted_at of the attempt's first chunk (seq 0)
    chunks: list[tuple[float, int]] = field(default_factory=list)


def added_first_token(user: UserStream, direct: DirectStream) -> float | None:
    """(submit -> first token at the client) - (request -> first token, read directly)."""
    times = token_times(user.chunks)
    if not times or not direct.tokens:
        return None
    return (times[0] - user.submitted) - (direct.tokens[0] - direct.requested)


def token_lags(user: UserStream, direct: DirectStream) -> list[float]:
    """Per token k: client receipt - (first chunk emitted + (direct token k - direct token 0)).

    The streamer flushes the first token at once, so the first chunk's emitted_at is
    when it had token 0; tokens beyond either stream's end are left out.
    """
    if user.first_emitted is None or not direct.tokens:
        return []
    times = token_times(user.chunks)
    zero = direct.tokens[0]
    return [
        received - (user.first_emitted + (upstream - zero))
        for received, upstream in zip(times, direct.tokens, strict=False)
    ]


def first_token_parts(
    user: UserStream, direct: DirectStream
) -> tuple[float, float, float, float] | None:
    """The added time to first token in four parts that sum to it: submit -> 202; 202 -> the
    job's slot given (the command fetched from Kafka, the dispatch); the slot -> the
    streamer's first chunk, minus the direct reader's time to first token (the upstream
    request, the first token's flush); the first chunk's hop to the client (Kafka, the
    notifier, the WebSocket). Both ends of the middle two are the streamer's clock."""
    times = token_times(user.chunks)
    if (
        not times
        or not direct.tokens
        or user.accepted is None
        or user.started is None
        or user.first_emitted is None
    ):
        return None
    direct_ttft = direct.tokens[0] - direct.requested
    return (
        user.accepted - user.submitted,
        user.started - user.accepted,
        user.first_emitted - user.started - direct_ttft,
        times[0] - user.first_emitted,
    )
