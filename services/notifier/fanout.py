"""Fan-out: who is subscribed to which channel, and one encoded frame queued for all of them.

A frame is encoded once (`frames.py`); the same object goes into every
subscriber's outbox, so a chunk costs one encoding whatever the audience. A
client whose outbox is full is handed to `on_full` (backpressure) after the
others got the frame: a slow client never delays another one.
"""

from __future__ import annotations

from collections.abc import Callable, Set

from services.notifier.client import Client
from services.notifier.frames import Frame
from services.notifier.state import JobState


class Fanout:
    __slots__ = ("count", "jobs", "on_full", "users")

    def __init__(self, on_full: Callable[[Client], None]) -> None:
        self.jobs: dict[str, set[Client]] = {}  # job id → clients on `job:{id}`
        self.users: dict[str, set[Client]] = {}  # user id → clients on `user:{id}`
        self.count = 0  # live subscriptions, both kinds
        self.on_full = on_full

    def send(self, subs: Set[Client], frame: Frame) -> None:
        overflowed: list[Client] | None = None
        for client in subs:
            if not client.offer(frame):
                if overflowed is None:
                    overflowed = []
                overflowed.append(client)
        if overflowed:
            for client in overflowed:
                self.on_full(client)

    def deliver(self, state: JobState, frame: Frame) -> None:
        """A lifecycle frame: to the job's subscribers and to its owner's user channel."""
        subs = self.jobs.get(state.job_id)
        if subs:
            self.send(subs, frame)
        if state.owner is not None:
            users = self.users.get(state.owner)
            if users:
                self.send(users, frame)

    def add_job(self, client: Client, job_id: str) -> None:
        client.channels[f"job:{job_id}"] = None
        self.jobs.setdefault(job_id, set()).add(client)
        self.count += 1

    def add_user(self, client: Client, user_id: str) -> None:
        channel = f"user:{user_id}"
        if channel not in client.channels:
            client.channels[channel] = None
            self.users.setdefault(user_id, set()).add(client)
            self.count += 1

    def remove(self, client: Client, channel: str) -> bool:
        """End a live subscription; False if the client had none on `channel`."""
        if channel not in client.channels:
            return False
        client.channels.pop(channel, None)
        kind, _, ident = channel.partition(":")
        table = self.jobs if kind == "job" else self.users
        subs = table.get(ident)
        if subs is not None:
            subs.discard(client)
            if not subs:
                del table[ident]
        self.count -= 1
        return True

    def drop_job(self, job_id: str) -> None:
        """The job is forgotten: its subscribers lose the channel, without a word."""
        channel = f"job:{job_id}"
        for client in self.jobs.pop(job_id, set()):
            client.channels.pop(channel, None)
            self.count -= 1
