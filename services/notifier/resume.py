"""Resume from a seq: what a client that saw up to `last_seq` of `attempt` gets.

The answer to a job subscription is a `subscribed` frame, then the chunks the
client lacks and the final event if the job ended; or, when those chunks are no
longer held here, a `resync` saying where the history held here begins. A
client that claims chunks not read here yet is "ahead": live chunks up to its
`last_seq` are left out for it, so it gets none of them twice. A WebSocket
client says where it stopped in its `subscribe` (`protocol.py`), an SSE client
in `Last-Event-ID` (read here).

Pure logic over `JobState`, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.notifier.client import Client
from services.notifier.frames import Frame, control
from services.notifier.state import JobState
from shared.contracts import TokenChunk


@dataclass(slots=True)
class Replay:
    """What a subscriber is owed: chunk frames, the final event if any, and any gap."""

    frames: list[Frame]
    restarted: bool  # the client's attempt is not the current one: it starts from seq 0
    missing: bool  # chunks the client lacks are no longer held here


def replay(state: JobState, last_seq: int, attempt: int | None) -> Replay:
    """Frames a client that saw up to `last_seq` of `attempt` (None: current) is owed."""
    if state.partial and not state.chunks:
        # Known from before the replayed history only: whatever it streamed is not here.
        return Replay([state.final] if state.final is not None else [], False, True)
    if attempt is not None and attempt > state.attempt:
        # The client is ahead of what was read here so far: nothing to replay yet.
        return Replay([state.final] if state.final is not None else [], False, False)
    restarted = attempt is not None and attempt < state.attempt
    after = -1 if restarted else last_seq
    missing = after + 1 < state.first_seq and bool(state.chunks)
    start = max(0, after + 1 - state.first_seq)
    frames = state.chunks[start:]
    if state.final is not None:
        frames = [*frames, state.final]
    return Replay(frames, restarted, missing)


def is_ahead(state: JobState, last_seq: int, attempt: int | None) -> bool:
    """Whether a client claims chunks not read here yet (it must not get them twice)."""
    if attempt is not None and attempt != state.attempt:
        return attempt > state.attempt
    return last_seq > state.last_seq


def answer(state: JobState, last_seq: int, attempt: int | None) -> list[Frame]:
    """The frames that open a job subscription: `subscribed`, a resync if history lacks, replay."""
    channel = f"job:{state.job_id}"
    owed = replay(state, last_seq, attempt)
    frames = [
        control(
            "subscribed",
            channel=channel,
            job_id=state.job_id,
            status=state.status,
            attempt=state.attempt,
            last_seq=state.last_seq,
            restarted=owed.restarted,
        )
    ]
    if owed.missing:
        frames.append(
            control(
                "resync",
                channel=channel,
                job_id=state.job_id,
                reason="history unavailable",
                attempt=state.attempt,
                first_seq=state.first_seq,
                last_seq=state.last_seq,
                status=state.status,
            )
        )
    frames.extend(owed.frames)
    return frames


def parse_last_event_id(value: str | None) -> tuple[int, int | None]:
    """SSE's `Last-Event-ID: attempt:seq` → (last_seq, attempt); absent → (-1, None).

    The `id` of every SSE chunk and event is written in this form (`frames.py`).
    Raises ValueError.
    """
    if not value:
        return -1, None
    attempt, sep, seq = value.partition(":")
    if not (sep and attempt.isdigit() and seq.lstrip("-").isdigit()):
        raise ValueError("Last-Event-ID must be '<attempt>:<seq>'")
    a, s = int(attempt), int(seq)
    if s < -1:
        raise ValueError("Last-Event-ID must be '<attempt>:<seq>' with attempt >= 0, seq >= -1")
    return s, (a if a > 0 else None)


class Ahead:
    """Clients that resumed past what was read here: job → client → (attempt, last seq).

    `by_job` is read on the per-chunk path (one dict lookup, empty for almost
    every job); `skip` runs only for a job that has such clients.
    """

    __slots__ = ("by_job",)

    def __init__(self) -> None:
        self.by_job: dict[str, dict[Client, tuple[int, int]]] = {}

    def note(self, client: Client, state: JobState, last_seq: int, attempt: int | None) -> None:
        """Remember a client that subscribed with chunks not read here yet, if it did."""
        if is_ahead(state, last_seq, attempt):
            key = attempt if attempt is not None else max(state.attempt, 1)
            self.by_job.setdefault(state.job_id, {})[client] = (key, last_seq)

    def skip(
        self, record: TokenChunk, ahead: dict[Client, tuple[int, int]], subs: set[Client]
    ) -> set[Client]:
        """Leave out clients that already have this chunk; forget those it catches up with."""
        attempt, seq = record.data.attempt, record.data.seq
        skip = set()
        for client, (their_attempt, their_seq) in list(ahead.items()):
            if attempt < their_attempt or (attempt == their_attempt and seq <= their_seq):
                skip.add(client)
            if attempt > their_attempt or (attempt == their_attempt and seq >= their_seq):
                del ahead[client]
        if not ahead:
            del self.by_job[record.job_id]
        return subs - skip if skip else subs

    def forget(self, client: Client, job_id: str) -> None:
        ahead = self.by_job.get(job_id)
        if ahead is not None:
            ahead.pop(client, None)

    def forget_job(self, job_id: str) -> None:
        self.by_job.pop(job_id, None)
