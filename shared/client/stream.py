"""What `follow` yields, and where a follower stands in a job's stream: pure bookkeeping of
(attempt, seq), tested without a socket.

Chunks of one attempt have seq 0, 1, 2... with no gap; a retried job starts a new attempt at
seq 0, whose text replaces the previous attempt's (docs/websocket-protocol.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.lifecycle import JobStatus, status_after


@dataclass(frozen=True, slots=True)
class Chunk:
    """Some text of the job's current attempt.

    `replaces` is true when every text received before this chunk is void: a new attempt
    started over (after a retry), or the text so far was fetched whole because the
    notifier no longer held the chunks in between. Keep `text` then, not the sum.
    """

    job_id: str
    attempt: int
    seq: int
    text: str
    tokens: int
    replaces: bool = False


@dataclass(frozen=True, slots=True)
class Event:
    """A lifecycle event of the job (`job.started`, `job.retrying`, `job.completed`...);
    `data` is its body as in the Kafka contract (`data["response"]` of `job.completed`)."""

    job_id: str
    event: str
    data: dict[str, Any]

    @property
    def status(self) -> JobStatus | None:
        return status_after(self.event)

    @property
    def final(self) -> bool:
        status = self.status
        return status is not None and status.is_final


class Gap(Exception):
    """A chunk arrived after one that is missing: the stream must be read again from here."""


@dataclass(slots=True)
class Position:
    """The last chunk processed: what a resumed subscription names (attempt 0: none yet)."""

    attempt: int = 0
    last_seq: int = -1

    def accept(self, job_id: str, attempt: int, seq: int, text: str, tokens: int) -> Chunk | None:
        """The chunk to hand on, None for one already handed on; raises `Gap`."""
        if attempt < self.attempt or (attempt == self.attempt and seq <= self.last_seq):
            return None  # a replay overlapping what was processed, or a replaced attempt
        expected = self.last_seq + 1 if attempt == self.attempt else 0
        if seq != expected:
            raise Gap(f"attempt {attempt}: seq {seq} after {self.last_seq}")
        replaces = attempt != self.attempt and self.attempt > 0
        self.attempt, self.last_seq = attempt, seq
        return Chunk(job_id, attempt, seq, text, tokens, replaces)

    def jump(self, job_id: str, attempt: int, last_seq: int, text: str, tokens: int) -> Chunk:
        """The whole text so far of `attempt`, up to `last_seq`, as fetched over REST."""
        self.attempt, self.last_seq = attempt, last_seq
        return Chunk(job_id, attempt, last_seq, text, tokens, replaces=True)

    def is_behind(self, attempt: int, last_seq: int) -> bool:
        return (self.attempt, self.last_seq) < (attempt, last_seq)

    @property
    def last_event_id(self) -> str:
        """SSE's `Last-Event-ID`: `attempt:seq` (`0:-1` before any chunk)."""
        return f"{self.attempt}:{self.last_seq}"

    def subscribe(self, job_id: str) -> dict[str, Any]:
        """The WebSocket `subscribe` message that resumes after this position."""
        message: dict[str, Any] = {
            "type": "subscribe",
            "channel": f"job:{job_id}",
            "last_seq": self.last_seq,
        }
        if self.attempt:
            message["attempt"] = self.attempt
        return message
