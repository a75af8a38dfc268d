"""Whether a subscription may go ahead: the per-connection cap, the owner check, the waiting ones.

A subscription to a job whose owner is not known yet waits (the client may
subscribe right after the 202, before the job.accepted is read here). One to
another user's job waits the same time before the same refusal as an unknown
job, so neither answer nor timing tells whether the id exists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from services.notifier.client import Client
from services.notifier.frames import Frame, error_frame
from services.notifier.metrics import NotifierMetrics
from services.notifier.state import JobState

FORBIDDEN = "no such job, or not yours"


class SubscribeError(Exception):
    """A subscription refused at once (not the job-ownership answer, which is delayed)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class Pending:
    client: Client
    job_id: str
    last_seq: int
    attempt: int | None
    deadline: float


class Authorisation:
    def __init__(
        self,
        metrics: NotifierMetrics,
        *,
        pending_s: float,
        max_subscriptions: int,
        reply: Callable[[Client, list[Frame]], None],
    ) -> None:
        self.metrics = metrics
        self.pending_s = pending_s
        self.max_subscriptions = max_subscriptions
        self._reply = reply
        self.pending: dict[str, list[Pending]] = {}  # job id → subscriptions waiting for it

    def check_room(self, client: Client, channel: str) -> None:
        if channel in client.channels or channel in client.pending:
            return  # a resubscription replaces the old one
        if len(client.channels) + len(client.pending) >= self.max_subscriptions:
            raise SubscribeError(
                "too_many_subscriptions", f"at most {self.max_subscriptions} per connection"
            )

    @staticmethod
    def may_see(client: Client, state: JobState | None) -> bool:
        principal = client.principal
        return (
            state is not None
            and state.owner is not None
            and principal is not None
            and principal.may_see(state.owner)
        )

    def check_user(self, client: Client, user_id: str) -> None:
        principal = client.principal
        assert principal is not None
        if not principal.may_see(user_id):
            self.metrics.auth_failures.labels("forbidden").inc()
            raise SubscribeError("forbidden", "not your user channel")

    def wait(
        self, client: Client, job_id: str, last_seq: int, attempt: int | None, now: float
    ) -> None:
        """Hold a job subscription until its owner is known, or its wait is over."""
        client.pending[f"job:{job_id}"] = None
        self.pending.setdefault(job_id, []).append(
            Pending(client, job_id, last_seq, attempt, now + self.pending_s)
        )

    def granted(self, state: JobState) -> list[Pending]:
        """Take the waiting subscriptions to a job whose owner just became known that may go on."""
        waiting = self.pending.get(state.job_id, [])
        channel = f"job:{state.job_id}"
        keep, go = [], []
        for p in waiting:
            if self.may_see(p.client, state):
                p.client.pending.pop(channel, None)
                go.append(p)
            else:
                keep.append(p)
        if keep:
            self.pending[state.job_id] = keep
        else:
            self.pending.pop(state.job_id, None)
        return go

    def expire(self, now: float) -> None:
        """Refuse the subscriptions whose wait is over."""
        for job_id in [j for j, ps in self.pending.items() if ps[0].deadline <= now]:
            left = []
            for p in self.pending[job_id]:
                if p.deadline <= now:
                    self._refuse(p)
                else:
                    left.append(p)
            if left:
                self.pending[job_id] = left
            else:
                del self.pending[job_id]

    def _refuse(self, p: Pending) -> None:
        channel = f"job:{p.job_id}"
        p.client.pending.pop(channel, None)
        self.metrics.auth_failures.labels("forbidden").inc()
        self._reply(p.client, [error_frame("forbidden", FORBIDDEN, channel=channel)])
        p.client.on_subscribe(channel, False)

    def cancel(self, client: Client, channel: str) -> bool:
        """Forget a waiting subscription; False if the client had none on `channel`."""
        if channel not in client.pending:
            return False
        client.pending.pop(channel, None)
        job_id = channel.partition(":")[2]
        left = [p for p in self.pending.get(job_id, []) if p.client is not client]
        if left:
            self.pending[job_id] = left
        else:
            self.pending.pop(job_id, None)
        return True
