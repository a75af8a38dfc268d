"""One connected client (WebSocket or SSE): its bounded outbox and its subscriptions.

The hub puts frames in the outbox without awaiting, and the client's `wake`
hook hears of it: a WebSocket connection writes them to its socket once per
event-loop turn (`flush.py`), an SSE stream's task takes them (`take`). A slow
client only ever fills its own outbox. Every frame, replies included, goes
through the bound: a client that does not read cannot make the outbox grow past
`limit` frames plus one subscription's replay. The bound counts what the socket
would not take, not what one Kafka fetch brought at once: a WebSocket client whose
outbox fills before the turn's flush first has it written through (`drain`), and
is a slow consumer only if its socket cannot take it. An SSE stream has no such hook;
the reader hands the hub at most half an outbox of records per poll and yields
between polls, so the stream's task takes them first.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable

from services.notifier.frames import Frame
from shared.auth import Principal

_ids = itertools.count(1)


class Client:
    __slots__ = (
        "_closing",
        "_event",
        "_frames",
        "channels",
        "drain",
        "id",
        "kill",
        "limit",
        "marked",
        "on_redirect",
        "on_subscribe",
        "pending",
        "principal",
        "queued_chars",
        "resyncs",
        "send_started",
        "wake",
    )

    def __init__(
        self,
        principal: Principal | None,
        limit: int,
        *,
        kill: Callable[[int, str], None] | None = None,
        on_subscribe: Callable[[str, bool], None] | None = None,
        on_redirect: Callable[[str, int], None] | None = None,
        wake: Callable[[Client], None] | None = None,
        drain: Callable[[Client], None] | None = None,
    ) -> None:
        self.id = next(_ids)
        self.principal = principal
        self.limit = limit
        # Dicts used as sets: an empty one is 64 bytes, an empty set 216.
        self.channels: dict[str, None] = {}  # live subscriptions
        self.pending: dict[str, None] = {}  # waiting for the job's owner to be known
        self.resyncs = 0
        self.send_started: float | None = None  # monotonic time of a send in progress
        self.kill = kill or (lambda _code, _reason: None)
        self.on_subscribe = on_subscribe or (lambda _channel, _ok: None)
        # (job id, owning instance) of an authorised subscription to another instance's job;
        # None: the hub answers it with a redirect frame (WebSocket).
        self.on_redirect = on_redirect
        # A list, not a deque: an empty deque allocates a 64-slot block, and most outboxes are
        # empty most of the time (20,000 clients per process).
        self._frames: list[Frame] = []
        self.queued_chars = 0  # text characters in the outbox (len of a str is O(1))
        # Called when frames were queued or a close asked for; None: `take` waits for them.
        self.wake = wake
        self.marked = False  # already due to be written this event-loop turn (flush.py)
        # Writes the outbox to the socket now, as far as the socket takes it; None: the
        # outbox only empties when the client's own task takes from it (SSE).
        self.drain = drain
        self._event: asyncio.Event | None = None
        self._closing: tuple[int, str] | None = None

    def __hash__(self) -> int:
        return self.id

    def __eq__(self, other: object) -> bool:
        return self is other

    def __len__(self) -> int:
        return len(self._frames)

    def offer(self, frame: Frame) -> bool:
        """Queue a live frame; False when the outbox is full (the frame is not queued)."""
        if len(self._frames) >= self.limit and not self._drained():
            return False
        self._frames.append(frame)
        self.queued_chars += len(frame.text)
        self._notify()
        return True

    def push(self, frames: Iterable[Frame]) -> bool:
        """Queue replies or a subscription's replay, which may go past the bound once.

        False (nothing queued) when the outbox is already full: the client is
        not reading, and the caller treats it as a slow consumer.
        """
        if len(self._frames) >= self.limit and not self._drained():
            return False
        self._extend(frames)
        return True

    def _drained(self) -> bool:
        """The outbox is full: write it through now; True if that made room."""
        if self.drain is None:
            return False
        self.drain(self)
        return len(self._frames) < self.limit

    def _extend(self, frames: Iterable[Frame]) -> None:
        for frame in frames:
            self._frames.append(frame)
            self.queued_chars += len(frame.text)
        self._notify()

    def _notify(self) -> None:
        if self.wake is not None:
            self.wake(self)
        elif self._event is not None:
            self._event.set()

    def reset(self, frames: Iterable[Frame]) -> int:
        """Drop everything queued and queue `frames` instead; returns how many were dropped."""
        dropped = len(self._frames)
        self._frames.clear()
        self.queued_chars = 0
        self._extend(frames)
        return dropped

    def close(self, code: int, reason: str) -> None:
        """Close once what is queued now has been sent."""
        self._closing = (code, reason)
        self._notify()

    def take_now(self, budget: int) -> list[Frame]:
        """Take queued frames, oldest first, until their text passes `budget` characters.

        At least one frame is taken when any is queued; the rest stay queued.
        """
        frames = self._frames
        taken = 0
        chars = 0
        for frame in frames:
            taken += 1
            chars += len(frame.text)
            if chars >= budget:
                break
        if taken == len(frames):
            self._frames = []
            self.queued_chars = 0
            return frames
        head = frames[:taken]
        del frames[:taken]
        self.queued_chars -= chars
        return head

    async def take(self) -> list[Frame]:
        """Wait for frames and take all of them; empty once `close` was called and drained."""
        while not self._frames:
            if self._closing is not None:
                return []
            if self._event is None:
                self._event = asyncio.Event()
            self._event.clear()
            await self._event.wait()
        frames = self._frames
        self._frames = []
        self.queued_chars = 0
        return frames

    @property
    def closing(self) -> tuple[int, str] | None:
        return self._closing
