"""Time series over stored jobs for the dashboard's charts, computed in SQL per step.

Each series is one aggregate per step of a grid aligned to the step (so two refreshes a
few seconds apart draw the same points); the grid and the filling of steps without rows
are pure functions, tested without a database.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from shared.api import AnalyticsSeries
from shared.auth import Principal
from shared.lifecycle import JobStatus
from shared.topics import PRIORITY_ORDER

SUBMITTED = "submitted"
RATE_KEYS = (
    SUBMITTED,
    JobStatus.COMPLETED.value,
    JobStatus.FAILED.value,
    JobStatus.CANCELLED.value,
)


@dataclass(frozen=True, slots=True)
class Grid:
    """`points` steps of `step_s` seconds from `start` (epoch seconds, a multiple of step)."""

    start: int
    step_s: int
    points: int

    @property
    def starts(self) -> list[int]:
        return [self.start + i * self.step_s for i in range(self.points)]

    @property
    def begin(self) -> datetime:
        return datetime.fromtimestamp(self.start, UTC)

    @property
    def end(self) -> datetime:
        return self.begin + timedelta(seconds=self.points * self.step_s)


def grid(since: datetime, until: datetime, step_s: int) -> Grid:
    """The steps that cover `[since, until)`: the first starts at or before `since`."""
    first = math.floor(since.timestamp() / step_s) * step_s
    points = max(1, math.ceil((until.timestamp() - first) / step_s))
    return Grid(first, step_s, points)


def dense(rows: Iterable[tuple[int, Any]], points: int, empty: Any) -> list[Any]:
    """Values by step index into a list of `points`, `empty` where a step had no row."""
    out = [empty] * points
    for i, value in rows:
        if 0 <= i < points:
            out[i] = value
    return out


def _owner(principal: Principal, args: list[Any]) -> str:
    """The condition that keeps a user to their own jobs (an admin sees all)."""
    if principal.is_admin:
        return "j.user_id IS NOT NULL"
    args.append(principal.user_id)
    return f"j.user_id = ${len(args)}"


# $1 grid start, $2 grid end, $3 step seconds; `{at}` is the moment that places a row.
_STEP = "floor(extract(epoch FROM ({at} - $1::timestamptz))::float8 / $3::float8)::int"


# When a job left its band's queue: its first start, or its end if it never started
# (cancelled while queued), 'infinity' while it waits; never before its submission, so a
# clock a little behind cannot make a job leave before it came.
_LEFT = "greatest(coalesce(j.started_at, j.finished_at, 'infinity'::timestamptz), j.submitted_at)"


def queue_depth(
    waiting: dict[str, int], moves: Iterable[tuple[int, str, int]], points: int
) -> dict[str, list[int]]:
    """Jobs waiting per band at each step's end: `waiting` at the start, plus each step's
    moves (arrivals positive, departures negative) cumulated."""
    delta = {band.value: [0] * points for band in PRIORITY_ORDER}
    for i, band, n in moves:
        if band in delta and 0 <= i < points:
            delta[band][i] += n
    depth: dict[str, list[int]] = {}
    for band, steps in delta.items():
        level = waiting.get(band, 0)
        depth[band] = []
        for change in steps:
            level += change
            depth[band].append(max(0, level))
    return depth


def _in_grid(at: str) -> str:
    return f"{at} >= $1::timestamptz AND {at} < $2::timestamptz"


async def series(
    conn: asyncpg.Connection, principal: Principal, since: datetime, until: datetime, step_s: int
) -> AnalyticsSeries:
    g = grid(since, until, step_s)
    args: list[Any] = [g.begin, g.end, float(step_s)]
    owner = _owner(principal, args)
    n = g.points

    submitted = await conn.fetch(
        f"""SELECT {_STEP.format(at="j.submitted_at")} AS i, count(*) AS n FROM jobs j
            WHERE {owner} AND {_in_grid("j.submitted_at")} GROUP BY 1""",
        *args,
    )
    finished = await conn.fetch(
        f"""SELECT {_STEP.format(at="j.finished_at")} AS i, j.status, count(*) AS n FROM jobs j
            WHERE {owner} AND {_in_grid("j.finished_at")} GROUP BY 1, 2""",
        *args,
    )
    rates = {SUBMITTED: dense(((r["i"], r["n"] / step_s) for r in submitted), n, 0.0)}
    for status in RATE_KEYS[1:]:
        rows = ((r["i"], r["n"] / step_s) for r in finished if r["status"] == status)
        rates[status] = dense(rows, n, 0.0)

    results = await conn.fetch(
        f"""SELECT {_STEP.format(at="r.completed_at")} AS i,
                   coalesce(sum(r.completion_tokens), 0)::bigint AS tokens,
                   percentile_cont(0.95) WITHIN GROUP (ORDER BY r.ttft_ms) AS ttft
            FROM jobs j JOIN results r ON r.job_id = j.job_id
            WHERE {owner} AND {_in_grid("r.completed_at")} GROUP BY 1""",
        *args,
    )
    waits = await conn.fetch(
        f"""SELECT {_STEP.format(at="j.started_at")} AS i,
                   percentile_cont(0.95) WITHIN GROUP (ORDER BY j.queue_wait_ms) AS wait
            FROM jobs j WHERE {owner} AND {_in_grid("j.started_at")} GROUP BY 1""",
        *args,
    )
    # Queue depth: those waiting at the grid's start, then each step's arrivals less its
    # departures (cumulated below), rather than a count per step over every job.
    waiting = await conn.fetch(
        f"""SELECT j.priority, count(*) AS n FROM jobs j
            WHERE {owner} AND j.priority IS NOT NULL
              AND j.submitted_at < $1::timestamptz AND {_LEFT} >= $1::timestamptz
              AND $2::timestamptz IS NOT NULL AND $3::float8 IS NOT NULL
            GROUP BY 1""",
        *args,
    )
    moves = await conn.fetch(
        f"""SELECT {_STEP.format(at="j.submitted_at")} AS i, j.priority, 1 AS sign, count(*) AS n
            FROM jobs j WHERE {owner} AND j.priority IS NOT NULL AND {_in_grid("j.submitted_at")}
            GROUP BY 1, 2
            UNION ALL
            SELECT {_STEP.format(at=_LEFT)}, j.priority, -1, count(*)
            FROM jobs j WHERE {owner} AND j.priority IS NOT NULL AND {_in_grid(_LEFT)}
              AND j.submitted_at IS NOT NULL
            GROUP BY 1, 2""",
        *args,
    )
    queue = queue_depth(
        {r["priority"]: r["n"] for r in waiting},
        [(r["i"], r["priority"], r["sign"] * r["n"]) for r in moves],
        n,
    )
    return AnalyticsSeries(
        since=since,
        until=until,
        step_s=step_s,
        t=g.starts,
        jobs_per_second=rates,
        tokens_per_second=dense(((r["i"], r["tokens"] / step_s) for r in results), n, 0.0),
        queue_depth=queue,
        queue_wait_p95_ms=dense(((r["i"], r["wait"]) for r in waits), n, None),
        ttft_p95_ms=dense(((r["i"], r["ttft"]) for r in results), n, None),
    )
