"""A steady load of jobs over every gateway, one WebSocket follower per accepted job.

Submissions rotate over the gateways and over a pool of users (each user's rate and
in-flight limits stay far away). Every other follower first connects to a notifier that does
not serve its job, so that it is redirected. A gateway that cannot be reached is retried on the next
one with the same Idempotency-Key, so a submission whose answer was lost is not made twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from deploy.chaos.follower import Follower
from shared.auth import issue_token

SUBMIT_TRIES = 6  # about one pass over the gateways of a fleet of two, twice


@dataclass
class Job:
    job_id: str
    user: str
    token: str
    follower: Follower
    task: asyncio.Task[None] | None = None


@dataclass
class Load:
    gateways: list[str]
    notifier_ws: list[str]
    auth_secret: str
    rate: float = 3.0  # submissions a second
    tokens: int = 300  # each completion's length: the simulator streams exactly this many
    tokens_per_s: float = 100.0  # so a stream lasts tokens / tokens_per_s seconds
    users: int = 20
    follow_s: float = 600.0  # a follower gives up after this long
    jobs: list[Job] = field(default_factory=list)
    refused: int = 0
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [f"chaos-{n:02d}" for n in range(self.users)]
        self._tokens = {name: issue_token(self.auth_secret, name) for name in names}
        self._user_cycle = itertools.cycle(names)
        self._gateway_cycle = itertools.cycle(range(len(self.gateways)))

    async def run(self, stop: asyncio.Event) -> None:
        """Submit at `rate` until `stop` is set; submissions overlap, so a slow one does not
        slow the rate."""
        timeout = aiohttp.ClientTimeout(total=20, connect=3)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            pending: set[asyncio.Task[None]] = set()
            while not stop.is_set():
                task = asyncio.create_task(self.submit_one(http))
                pending.add(task)
                task.add_done_callback(pending.discard)
                with contextlib.suppress(TimeoutError):  # the next tick
                    await asyncio.wait_for(stop.wait(), timeout=1 / self.rate)
            if pending:
                await asyncio.gather(*pending)

    async def submit_one(self, http: aiohttp.ClientSession) -> None:
        user = next(self._user_cycle)
        token = self._tokens[user]
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex}
        body = {
            "prompt": "Summarise why replicated logs keep acknowledged records. "
            f"[[sim tokens={self.tokens} tps={self.tokens_per_s:g}]]",
            "job_type": "analysis",
            "priority": "normal",
            "config": {"model": "gpt-4o-mini", "max_tokens": self.tokens},
            "metadata": {"source": "make chaos"},
        }
        first = next(self._gateway_cycle)
        for attempt in range(SUBMIT_TRIES):
            base = self.gateways[(first + attempt) % len(self.gateways)]
            try:
                async with http.post(f"{base}/api/v1/jobs", json=body, headers=headers) as resp:
                    payload: dict[str, Any] = await resp.json(content_type=None)
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.3)
                continue  # that gateway is down: the next one, the same key
            if status == 202:
                self._follow(str(payload["job_id"]), user, token, payload)
            elif status in (429, 503):
                self.refused += 1
            else:
                self.errors.append(f"submit answered {status}: {str(payload)[:200]}")
            return
        self.errors.append("no gateway answered a submission")

    def _follow(self, job_id: str, user: str, token: str, answer: dict[str, Any]) -> None:
        url = (answer.get("links") or {}).get("websocket") or self.notifier_ws[0]
        # Every other client first connects where its link does not point, as a client that
        # knows one notifier address would: the redirect is exercised under chaos too.
        start = self._elsewhere(url) if len(self.jobs) % 2 else url
        follower = Follower(job_id, token, url, list(self.notifier_ws), start_url=start)
        job = Job(job_id, user, token, follower)
        loop = asyncio.get_running_loop()
        job.task = asyncio.create_task(follower.run(loop.time() + self.follow_s))
        self.jobs.append(job)

    def _elsewhere(self, url: str) -> str:
        """The notifier after `url` in the list (`url` itself in a fleet of one)."""
        if url not in self.notifier_ws:
            return url
        return self.notifier_ws[(self.notifier_ws.index(url) + 1) % len(self.notifier_ws)]
