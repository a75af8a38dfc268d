"""One WebSocket client following one job to its end, as a careful client would: it follows
redirects to the job's notifier, and after losing its socket reconnects and resumes from the
last attempt and seq it processed. It records what a person would notice: gaps, duplicates,
resumes and the longest stall between two frames."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

MAX_REFUSALS = 5
FINAL_EVENTS = frozenset({"job.completed", "job.failed", "job.cancelled"})
# What ends one socket but not the client: the notifier died or was restarted, or refused
# the handshake while it replays its history after a start.
SOCKET_LOST = (ConnectionClosed, InvalidHandshake, OSError, TimeoutError)


@dataclass
class SeqCheck:
    """Per attempt, seq must run 0, 1, 2... without a hole or a repeat; a new attempt
    restarts at 0. Pure bookkeeping, so it is tested without a socket."""

    attempt: int = 0
    last_seq: int = -1
    gaps: int = 0
    duplicates: int = 0
    attempts_seen: set[int] = field(default_factory=set)

    def chunk(self, attempt: int, seq: int) -> None:
        if attempt < self.attempt:
            self.duplicates += 1  # a chunk of an attempt already replaced
            return
        if attempt > self.attempt:
            self.attempt, self.last_seq = attempt, -1
            self.attempts_seen.add(attempt)
        if seq <= self.last_seq:
            self.duplicates += 1
        elif seq > self.last_seq + 1:
            self.gaps += 1
            self.last_seq = seq
        else:
            self.last_seq = seq


@dataclass
class Follower:
    job_id: str
    token: str
    url: str  # the job's `links.websocket`
    fallback_urls: list[str]  # every notifier, tried in turn while `url` is unreachable
    start_url: str = ""  # where the first connection goes (default `url`)
    seqs: SeqCheck = field(default_factory=SeqCheck)
    final_events: list[str] = field(default_factory=list)
    resumes: int = 0
    redirects: int = 0
    resyncs: int = 0
    longest_stall_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    done: bool = False
    _last_frame: float = field(default_factory=time.monotonic)

    def _frame_arrived(self) -> None:
        now = time.monotonic()
        self.longest_stall_s = max(self.longest_stall_s, now - self._last_frame)
        self._last_frame = now

    async def run(self, deadline: float) -> None:
        """Follow until the final event or `deadline` (loop time)."""
        loop = asyncio.get_running_loop()
        url, tries = self.start_url or self.url, 0
        self._last_frame = time.monotonic()
        while not self.done and loop.time() < deadline:
            try:
                url = await self._session(url, deadline)
                tries = 0
                continue  # a redirect: straight to the named instance
            except (*SOCKET_LOST, _Stalled):
                pass
            if self.done:
                break
            self.resumes += 1
            tries += 1
            # The job's own instance first; while it stays down, any other (it redirects).
            candidates = [self.url, *[u for u in self.fallback_urls if u != self.url]]
            url = candidates[(tries // 2) % len(candidates)]
            await asyncio.sleep(min(0.2 * tries, 1.0))

    async def _session(self, url: str, deadline: float) -> str:
        """One socket; returns the URL of a redirect, or raises when the socket is lost."""
        loop = asyncio.get_running_loop()
        async with connect(url, open_timeout=5, close_timeout=1) as ws:
            await ws.send(json.dumps({"type": "auth", "token": self.token}))
            await self._subscribe(ws)
            while not self.done:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return url
                try:
                    raw = await asyncio.wait_for(ws.recv(), timeout=min(remaining, 30))
                except TimeoutError:
                    raise _Stalled from None
                self._frame_arrived()
                msg: dict[str, Any] = json.loads(raw)
                target = self._handle(msg)
                if target is not None:
                    self.redirects += 1
                    return target
                if msg.get("type") == "resync" and msg.get("reason") == "slow consumer":
                    await self._subscribe(ws)
        return url

    async def _subscribe(self, ws: Any) -> None:
        frame: dict[str, Any] = {
            "type": "subscribe",
            "channel": f"job:{self.job_id}",
            "last_seq": self.seqs.last_seq,
        }
        if self.seqs.attempt:
            frame["attempt"] = self.seqs.attempt
        await ws.send(json.dumps(frame))

    def _handle(self, msg: dict[str, Any]) -> str | None:
        kind = msg.get("type")
        if kind == "chunk":
            self.seqs.chunk(int(msg["attempt"]), int(msg["seq"]))
        elif kind == "event" and msg.get("event") in FINAL_EVENTS:
            self.final_events.append(str(msg["event"]))
            self.done = True
        elif kind == "redirect" and msg.get("url"):
            return str(msg["url"])
        elif kind == "resync":
            self.resyncs += 1
        elif kind == "error":
            self.errors.append(str(msg.get("code")))
            # A notifier that lags behind (it just restarted) does not know the job yet and
            # answers like for a stranger's: ask again a few times, then leave it to REST.
            if len(self.errors) >= MAX_REFUSALS:
                self.done = True
            else:
                raise _Stalled
        return None


class _Stalled(Exception):
    """Nothing arrived for a long while, or the job was refused: connect and ask again."""
