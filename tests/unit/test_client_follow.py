"""`Follow` without sockets: what each notifier frame becomes, and the reconnect loop over
scripted connections."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, cast

import aiohttp
import pytest

from shared.api import JobResult, StreamSnapshot
from shared.client.errors import CannotConnect, NotFound, Unauthorized
from shared.client.follow import Backoff, Follow, _Lost, _Moved, _Resubscribe
from shared.client.stream import Chunk, Event
from shared.lifecycle import JobStatus
from shared.topics import Priority


class FakeReads:
    """The REST reads, answering what the test says the read side holds."""

    def __init__(self, status: JobStatus, attempt: int, last_seq: int, text: str) -> None:
        self.status, self.attempt, self.last_seq, self.text = status, attempt, last_seq, text

    async def snapshot(self, job_id: str) -> StreamSnapshot:
        return StreamSnapshot(
            job_id=job_id,
            status=self.status,
            attempt=self.attempt,
            last_seq=self.last_seq,
            text=self.text,
            tokens=self.last_seq + 1,
        )

    async def result(self, job_id: str, *, wait_s: float = 0.0) -> JobResult:
        return JobResult(
            job_id=job_id,
            status=self.status,
            job_type="analysis",
            priority=Priority.NORMAL,
            attempt=self.attempt,
            response=self.text,
            completed_at=datetime.now(UTC),
        )


def follower(reads: FakeReads | None = None, **urls: str | None) -> Follow:
    return Follow(
        cast(aiohttp.ClientSession, None),  # never used: the sessions are scripted
        reads or FakeReads(JobStatus.RUNNING, 1, -1, ""),
        "j",
        token="t",
        ws_url=urls.get("ws_url", "ws://n/ws"),
        sse_url=urls.get("sse_url", "http://g/api/v1/jobs/j/events"),
        backoff=Backoff(first=0.0, longest=0.0, give_up_s=5.0),
    )


def chunk(seq: int, attempt: int = 1, text: str | None = None) -> dict[str, Any]:
    return {
        "type": "chunk",
        "attempt": attempt,
        "seq": seq,
        "text": text or f"t{seq} ",
        "tokens": 1,
    }


COMPLETED = {"type": "event", "event": "job.completed", "data": {"response": "t0 t1 t2 "}}
SUBSCRIBED = {"type": "subscribed", "status": "running", "attempt": 1, "last_seq": -1}


async def items_of(follow: Follow, *frames: dict[str, Any]) -> list[Chunk | Event]:
    out: list[Chunk | Event] = []
    for frame in frames:
        out += [item async for item in follow._on_frame(frame)]
    return out


async def test_chunks_are_handed_on_once_and_events_as_they_come() -> None:
    items = await items_of(follower(), SUBSCRIBED, chunk(0), chunk(1), chunk(1), COMPLETED)
    assert [i.seq for i in items if isinstance(i, Chunk)] == [0, 1]
    final = items[-1]
    assert isinstance(final, Event) and final.final and final.data["response"] == "t0 t1 t2 "


async def test_history_the_notifier_lacks_is_caught_up_over_rest_with_the_final_result() -> None:
    reads = FakeReads(JobStatus.COMPLETED, 1, 9, "the whole text")
    resync = {"type": "resync", "reason": "history unavailable", "status": "completed"}
    items = await items_of(follower(reads), SUBSCRIBED, resync)
    jumped, final = items
    assert isinstance(jumped, Chunk) and jumped.replaces and jumped.text == "the whole text"
    assert (jumped.attempt, jumped.seq) == (1, 9)
    assert isinstance(final, Event) and final.event == "job.completed"
    assert final.data["response"] == "the whole text"


async def test_a_follower_ahead_of_the_rest_snapshot_keeps_its_text() -> None:
    follow = follower(FakeReads(JobStatus.RUNNING, 1, 0, "t0 "))
    resync = {"type": "resync", "reason": "history unavailable", "status": "running"}
    assert await items_of(follow, chunk(0), chunk(1), resync) == await items_of(
        follower(), chunk(0), chunk(1)
    )


@pytest.mark.parametrize(
    ("frame", "raised"),
    [
        ({"type": "resync", "reason": "slow consumer"}, _Resubscribe),
        ({"type": "redirect", "url": "ws://n1/ws"}, _Moved),
        ({"type": "error", "code": "forbidden", "message": "no such job"}, NotFound),
        ({"type": "error", "code": "bad_token", "message": "forged"}, Unauthorized),
        ({"type": "error", "code": "too_many_connections", "message": "cap"}, _Lost),
        (chunk(5), Exception),  # a gap: read again from the position
    ],
)
async def test_control_frames_end_the_connection_as_they_mean(
    frame: dict[str, Any], raised: type[Exception]
) -> None:
    with pytest.raises(raised):
        await items_of(follower(), frame)


def test_sse_is_tried_after_some_websocket_failures_and_alone_without_one() -> None:
    follow = follower()
    assert [follow._use_sse(n) for n in range(8)] == [False] * 3 + [True] + [False] * 3 + [True]
    assert all(follower(ws_url=None)._use_sse(n) for n in range(3))
    assert not any(follower(sse_url=None)._use_sse(n) for n in range(8))


Script = list[list[dict[str, Any] | Exception]]


def scripted(follow: Follow, script: Script, used: list[str]) -> None:
    """Each connection replays the next list of frames; an exception in it ends it so."""

    def session(name: str) -> Callable[[], AsyncIterator[Chunk | Event]]:
        async def run() -> AsyncIterator[Chunk | Event]:
            used.append(name)
            for step in script.pop(0):
                if isinstance(step, Exception):
                    raise step
                async for item in follow._on_frame(step):
                    yield item

        return run

    follow._ws = session("websocket")  # type: ignore[method-assign]
    follow._sse = session("sse")  # type: ignore[method-assign]


async def test_a_lost_connection_resumes_and_a_redirect_moves_without_duplicates() -> None:
    follow, used = follower(), []
    scripted(
        follow,
        [
            [{"type": "redirect", "url": "ws://n1/ws"}],
            [SUBSCRIBED, chunk(0), chunk(1), _Lost("kill -9")],
            [_Lost("refused")],
            [SUBSCRIBED, chunk(1), chunk(2), COMPLETED],
        ],
        used,
    )
    text, final = await follow.text()
    assert text == "t0 t1 t2 " == final.data["response"]
    assert follow.ws_url == "ws://n1/ws" and follow.reconnects == 3
    assert used == ["websocket"] * 4


async def test_a_follower_gives_up_when_nothing_answers_for_too_long() -> None:
    follow, used = follower(), []
    follow.backoff = Backoff(first=0.01, longest=0.01, give_up_s=0.05)
    scripted(follow, [[_Lost("refused")] for _ in range(1000)], used)
    with pytest.raises(CannotConnect):
        await follow.text()
    assert "sse" in used and "websocket" in used
