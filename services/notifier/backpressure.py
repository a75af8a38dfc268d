"""Backpressure: what happens to a client whose bounded outbox is full.

Its backlog is dropped, its subscriptions end, and it gets one `resync` per
channel saying where each job stands, so it can resubscribe with its own
`last_seq`. Past `max_resyncs` the connection is closed with 4008. Replies go
through the same bound: a client that sends and never reads is a slow one too.
"""

from __future__ import annotations

from collections.abc import Callable

from services.notifier.client import Client
from services.notifier.frames import Frame, control
from services.notifier.metrics import NotifierMetrics
from services.notifier.state import JobState


class Backpressure:
    def __init__(
        self,
        metrics: NotifierMetrics,
        max_resyncs: int,
        *,
        detach: Callable[[Client, str], bool],
        job: Callable[[str], JobState | None],
    ) -> None:
        self.metrics = metrics
        self.max_resyncs = max_resyncs
        self._detach = detach  # ends one live subscription
        self._job = job  # the job held here, if any

    def reply(self, client: Client, frames: list[Frame]) -> None:
        """Queue an answer to the client; one that left its outbox full is a slow consumer."""
        if not client.push(frames):
            self.overflow(client)

    def overflow(self, client: Client) -> None:
        """The client fell `limit` frames behind: drop its backlog and tell it to resync."""
        if client.closing is not None:
            return  # already on its way out: nothing more is queued for it
        client.resyncs += 1
        self.metrics.resyncs.inc()
        channels = sorted(client.channels)
        for channel in channels:
            self._detach(client, channel)
        if client.resyncs > self.max_resyncs:
            self.metrics.frames_dropped.inc(client.reset(()) + 1)
            self.metrics.slow_closes.inc()
            client.kill(4008, "slow consumer")  # ws.CLOSE_SLOW; SSE just ends the stream
            return
        frames = [self._resync_frame(channel) for channel in channels]
        self.metrics.frames_dropped.inc(client.reset(frames) + 1)

    def _resync_frame(self, channel: str) -> Frame:
        kind, _, ident = channel.partition(":")
        if kind == "job":
            state = self._job(ident)
            if state is not None:
                return control(
                    "resync",
                    channel=channel,
                    job_id=ident,
                    reason="slow consumer",
                    attempt=state.attempt,
                    last_seq=state.last_seq,
                    status=state.status,
                )
        return control("resync", channel=channel, reason="slow consumer")
