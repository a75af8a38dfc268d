"""What a user sees, against the upstream read directly: added time to first token, token lag.

Times are epoch seconds on this machine's clock (the streamer's included). A stream is
the receipt time of each token, by index. For the pipeline, a chunk's receipt is the
receipt of every token it carries. The direct reader's offsets (token k's receipt minus
its request) are what the simulator's schedule gave; the simulator is deterministic, so
the pipeline's request of the same prompt gets the same schedule.
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

    def offsets(self) -> list[float]:
        return [t - self.requested for t in self.tokens]


@dataclass
class UserStream:
    """One job as a user saw it: submitted, started by the streamer, chunks received."""

    submitted: float
    job_id: str = ""
    started: float | None = None  # the job.started event's occurred_at (its last attempt)
    chunks: list[tuple[float, int]] = field(default_factory=list)


def added_first_token(user: UserStream, direct: DirectStream) -> float | None:
    """(submit -> first token at the client) - (request -> first token, read directly)."""
    times = token_times(user.chunks)
    if not times or not direct.tokens:
        return None
    return (times[0] - user.submitted) - (direct.tokens[0] - direct.requested)


def token_lags(user: UserStream, direct: DirectStream) -> list[float]:
    """Per token k: client receipt - (job started + when the direct reader got token k).

    The anchor is the streamer's clock as it began the attempt, before it published
    job.started and asked the upstream; tokens beyond either stream's end are left out.
    """
    if user.started is None:
        return []
    times = token_times(user.chunks)
    return [
        received - (user.started + offset)
        for received, offset in zip(times, direct.offsets(), strict=False)
    ]
