"""Which Idempotency-Keys were accepted in the last window: forgotten by time, never by count.

A keyed job's id is uuid5(user, key), so the id itself names the key. Each key is held as
two Python ints (the id's 128 bits; its body digest, status, band, type and accepted time
packed into one), in slices of the window by accepted time: a slice is dropped whole once
its newest key is past the window, so no key leaves early. Past `max_keys` nothing new is
remembered and `full` says so: the gateway then refuses new keys instead of forgetting old
ones, since a forgotten key turns a retried POST into a second job.
"""

from __future__ import annotations

import math
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

from shared.lifecycle import JobStatus
from shared.topics import Priority

_STATUSES = list(JobStatus)
_PRIORITIES = list(Priority)
_DIGEST_BITS = 64
_STATUS_SHIFT = _DIGEST_BITS
_PRIORITY_SHIFT = _STATUS_SHIFT + 3
_TYPE_SHIFT = _PRIORITY_SHIFT + 2
_TIME_SHIFT = _TYPE_SHIFT + 8
_MAX_TYPES = 1 << 8


@dataclass(frozen=True, slots=True)
class Remembered:
    """What the answer to a replayed submission needs, without the full view entry."""

    digest: int  # the first 64 bits of the body's fingerprint
    status: JobStatus
    job_type: str
    priority: Priority
    submitted_at: datetime


def short_digest(fingerprint: bytes) -> int:
    return int.from_bytes(fingerprint[:8], "big")


class IdempotencyMemory:
    def __init__(self, *, window_s: float, max_keys: int, slices: int = 24) -> None:
        self.window_s = window_s
        self.max_keys = max_keys
        self.slice_s = window_s / slices
        # (end of the slice, keys accepted in it), oldest first.
        self._slices: deque[tuple[float, dict[int, int]]] = deque()
        self._types: list[str] = []
        self._type_index: dict[str, int] = {}
        self._count = 0
        self.dropped = 0  # keys seen while full, not remembered

    def __len__(self) -> int:
        return self._count

    @property
    def full(self) -> bool:
        return self._count >= self.max_keys

    def retry_after_s(self, now: float) -> int:
        """When the oldest slice leaves the window and frees room."""
        if not self._slices:
            return 1
        return max(1, math.ceil(self._slices[0][0] + self.window_s - now))

    def remember(
        self,
        job_id: str,
        *,
        fingerprint: bytes,
        job_type: str,
        priority: Priority,
        submitted_at: datetime,
        at: float,
    ) -> bool:
        """Hold the key of `job_id`; False when it is held already or memory is full."""
        key = uuid.UUID(job_id).int
        if self._find(key) is not None:
            return False
        if self.full:
            self.dropped += 1
            return False
        type_index = self._type_index.get(job_type)
        if type_index is None:
            if len(self._types) >= _MAX_TYPES:
                self.dropped += 1
                return False
            type_index = self._type_index[job_type] = len(self._types)
            self._types.append(job_type)
        packed = (
            short_digest(fingerprint)
            | _STATUSES.index(JobStatus.QUEUED) << _STATUS_SHIFT
            | _PRIORITIES.index(priority) << _PRIORITY_SHIFT
            | type_index << _TYPE_SHIFT
            | max(0, round(submitted_at.timestamp() * 1000)) << _TIME_SHIFT
        )
        slices = self._slices
        if not slices or at >= slices[-1][0]:
            # A key that arrives late joins the newest slice: held longer, never shorter.
            slices.append(((math.floor(at / self.slice_s) + 1) * self.slice_s, {}))
        slices[-1][1][key] = packed
        self._count += 1
        return True

    def recall(self, job_id: str) -> Remembered | None:
        try:
            found = self._find(uuid.UUID(job_id).int)
        except ValueError:
            return None
        if found is None:
            return None
        packed = found[0][found[1]]
        return Remembered(
            digest=packed & ((1 << _DIGEST_BITS) - 1),
            status=_STATUSES[packed >> _STATUS_SHIFT & 0b111],
            job_type=self._types[packed >> _TYPE_SHIFT & (_MAX_TYPES - 1)],
            priority=_PRIORITIES[packed >> _PRIORITY_SHIFT & 0b11],
            submitted_at=datetime.fromtimestamp((packed >> _TIME_SHIFT) / 1000, UTC),
        )

    def set_status(self, job_id: str, status: JobStatus) -> None:
        found = self._find(uuid.UUID(job_id).int)
        if found is not None:
            keys, key = found
            cleared = keys[key] & ~(0b111 << _STATUS_SHIFT)
            keys[key] = cleared | _STATUSES.index(status) << _STATUS_SHIFT

    def forget(self, job_id: str) -> None:
        """Drop a key whose job was not published after all, so a retry publishes it."""
        found = self._find(uuid.UUID(job_id).int)
        if found is not None:
            del found[0][found[1]]
            self._count -= 1

    def expire(self, now: float) -> None:
        slices = self._slices
        while slices and slices[0][0] <= now - self.window_s:
            _, keys = slices.popleft()
            self._count -= len(keys)

    def _find(self, key: int) -> tuple[dict[int, int], int] | None:
        for _, keys in reversed(self._slices):  # a retry is most often of a recent key
            if key in keys:
                return keys, key
        return None
