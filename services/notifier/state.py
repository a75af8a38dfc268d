"""What the notifier knows of one job: owner, status, the current attempt's chunks, its end.

Pure logic, no I/O: the hub feeds it records in topic order and fans out what
it returns (what a resuming client is owed from it is `resume.py`'s). Events
and chunks come from two topics with no order between them, so a final event
that names a `last_seq` not seen yet is held until those chunks arrive (or
until the hub gives up waiting).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.notifier.frames import Frame, chunk_frame, event_frame
from shared.contracts import (
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobRetrying,
    JobStarted,
    LifecycleEvent,
    TokenChunk,
)
from shared.lifecycle import EVENT_STATUS, JobStatus


def _stream_attempt(record: JobStarted | JobRetrying | JobCompleted | JobCancelled) -> int:
    """The attempt whose chunks the event's attempt streams: an attempt that continues a
    cut-short answer (on_interrupt=continue) carries on the earlier attempt's seqs, so the
    client's stream goes on rather than restarting."""
    continues = record.data.continues
    return continues if continues is not None else record.data.attempt


@dataclass(slots=True)
class JobState:
    job_id: str
    owner: str | None = None  # fixed by the first job.accepted, never changed after
    accepted: bool = False  # a job.accepted was applied (a second one is not sent again)
    partial: bool = False  # the job began before the replayed history: earlier chunks are not here
    status: str = "unknown"  # a JobStatus once an event or chunk says more
    attempt: int = 0
    first_seq: int = 0  # seq of chunks[0]; > 0 when history began mid-attempt
    chunks: list[Frame] = field(default_factory=list)
    final: Frame | None = None
    held: Frame | None = None  # a final event waiting for its last chunks
    held_attempt: int = 0
    held_last_seq: int = -1
    held_since: float = 0.0
    finished_at: float | None = None

    @property
    def next_seq(self) -> int:
        return self.first_seq + len(self.chunks)

    @property
    def last_seq(self) -> int:
        return self.next_seq - 1

    @property
    def finished(self) -> bool:
        return self.final is not None

    def _new_attempt(self, attempt: int, first_seq: int = 0) -> None:
        self.attempt = attempt
        self.first_seq = first_seq
        self.chunks = []

    def apply_chunk(self, record: TokenChunk) -> tuple[Frame | None, Frame | None]:
        """Store a chunk; returns (chunk frame to fan out, final event released by it)."""
        d = record.data
        if self.final is not None or d.attempt < self.attempt:
            return None, None  # late chunk of a finished job or of an abandoned attempt
        if d.attempt > self.attempt:
            self._new_attempt(d.attempt, d.seq)
        elif not self.chunks:
            self.first_seq = d.seq
        elif d.seq < self.next_seq:
            return None, None  # a redelivered record
        elif d.seq > self.next_seq:
            # Records are missing (history began mid-job): keep only what follows the hole.
            self._new_attempt(d.attempt, d.seq)
        frame = chunk_frame(record)
        self.chunks.append(frame)
        if self.status in ("unknown", "queued"):  # literals: this runs per chunk
            self.status = "running"
        return frame, self._release_if_complete()

    def apply_event(self, record: LifecycleEvent, now: float) -> Frame | None:
        """Apply a lifecycle event; returns its frame when it is to go out now.

        A final event whose chunks have not all arrived is held (see `release_held`).
        """
        if self.final is not None or self.held is not None:
            return None  # a redelivered final, or an event after the end
        if isinstance(record, JobAccepted):
            if self.accepted or (self.owner is not None and self.owner != record.data.user_id):
                return None  # redelivered, or a later fact claiming the job for someone else
            self.owner = record.data.user_id
            self.accepted = True
            if self.status == "unknown":
                self.status = JobStatus.QUEUED
            return event_frame(record, self.attempt, self.last_seq)
        if isinstance(record, JobStarted):
            attempt = _stream_attempt(record)
            if attempt > self.attempt:
                self._new_attempt(attempt)
            elif attempt < self.attempt:
                return None
            self.status = JobStatus.RUNNING
            return event_frame(record, self.attempt, self.last_seq)
        if isinstance(record, JobRetrying):
            if _stream_attempt(record) < self.attempt and self.chunks:
                return None  # the next attempt already streams
            self.status = JobStatus.RETRYING
            return event_frame(record, self.attempt, self.last_seq)
        if isinstance(record, JobFailed):
            return self._finish(record, now)
        if isinstance(record, JobCompleted | JobCancelled):
            attempt, last_seq = _stream_attempt(record), record.data.last_seq
            if attempt > self.attempt:
                self._new_attempt(attempt)
            if attempt == self.attempt and self.next_seq <= last_seq:
                self.held = event_frame(record, attempt, last_seq)
                self.held_attempt, self.held_last_seq, self.held_since = attempt, last_seq, now
                self.status = EVENT_STATUS[record.type]
                return None
            return self._finish(record, now)
        return None

    def _finish(self, record: LifecycleEvent, now: float) -> Frame:
        self.status = EVENT_STATUS[record.type]
        self.final = event_frame(record, self.attempt, self.last_seq)
        self.finished_at = now
        return self.final

    def _release_if_complete(self) -> Frame | None:
        if self.held is not None and self.next_seq > self.held_last_seq:
            return self.release_held(self.held_since)
        return None

    def release_held(self, now: float) -> Frame | None:
        """Let a held final event go (its chunks arrived, or waiting for them took too long)."""
        frame, self.held = self.held, None
        if frame is not None:
            self.final = frame
            self.finished_at = now
        return frame
