"""The attempts of a job as its lifecycle events tell them, and their table.

Each event that names an attempt says something of it: where it ran (started), how it
ended and what it used (retrying, completed, failed, cancelled). The facts of one batch
are merged per attempt first, so one upsert writes each attempt row once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg

from services.results.projection import aware
from shared.contracts import (
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobRetrying,
    JobStarted,
    LifecycleEvent,
)
from shared.text import clean_optional


@dataclass(frozen=True, slots=True)
class AttemptFact:
    job_id: str
    attempt: int
    status: str
    upstream: str | None = None
    model: str | None = None
    continues: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    usage_estimated: bool = False
    reason: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None


def fact_of(event: LifecycleEvent) -> AttemptFact | None:
    """What `event` says of its attempt; None for events that name none (accepted)."""
    at = aware(event.occurred_at)
    job_id = event.job_id
    if isinstance(event, JobStarted):
        d = event.data
        return AttemptFact(
            job_id, d.attempt, "running", d.upstream, d.model, d.continues, started_at=at
        )
    if isinstance(event, JobCompleted):
        c = event.data
        return AttemptFact(
            job_id,
            c.attempt,
            "completed",
            c.upstream,
            c.model,
            c.continues,
            c.usage.prompt_tokens,
            c.usage.completion_tokens,
            c.usage.total_tokens,
            ended_at=at,
        )
    if isinstance(event, JobRetrying | JobFailed | JobCancelled):
        status = {JobRetrying: "failed", JobFailed: "failed", JobCancelled: "cancelled"}[
            type(event)
        ]
        e = event.data
        usage = e.usage
        return AttemptFact(
            job_id,
            e.attempt,
            status,
            e.upstream,
            e.model,
            e.continues,
            usage.prompt_tokens if usage is not None else None,
            usage.completion_tokens if usage is not None else None,
            usage.total_tokens if usage is not None else None,
            e.usage_estimated,
            e.reason,
            ended_at=at,
        )
    return None


def merge(facts: Iterable[AttemptFact]) -> list[AttemptFact]:
    """One fact per attempt, later facts overriding what they say (in event order)."""
    merged: dict[tuple[str, int], AttemptFact] = {}
    for fact in facts:
        key = (fact.job_id, fact.attempt)
        earlier = merged.get(key)
        if earlier is None:
            merged[key] = fact
            continue
        merged[key] = replace(
            fact,
            upstream=fact.upstream or earlier.upstream,
            model=fact.model or earlier.model,
            continues=fact.continues if fact.continues is not None else earlier.continues,
            started_at=earlier.started_at or fact.started_at,
        )
    return list(merged.values())


_COLUMNS = (
    "job_id",
    "attempt",
    "upstream",
    "model",
    "continues",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "usage_estimated",
    "reason",
    "started_at",
    "ended_at",
)
_TYPES = (
    "text",
    "int",
    "text",
    "text",
    "int",
    "text",
    "int",
    "int",
    "int",
    "bool",
    "text",
    "timestamptz",
    "timestamptz",
)
_KEEP_EARLIER = {"started_at"}  # the first start stands; everything else: the latest word
_UPSERT = (
    f"INSERT INTO attempts ({', '.join(_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(_TYPES))
    + ") ON CONFLICT (job_id, attempt) DO UPDATE SET "
    + ", ".join(
        f"{c} = COALESCE(attempts.{c}, EXCLUDED.{c})"
        if c in _KEEP_EARLIER
        else f"{c} = EXCLUDED.{c}"
        if c in ("status", "usage_estimated")
        else f"{c} = COALESCE(EXCLUDED.{c}, attempts.{c})"
        for c in _COLUMNS[2:]
    )
)


async def write_attempts(conn: asyncpg.Connection, events: Iterable[LifecycleEvent]) -> int:
    """Upsert the attempts `events` speak of, in one statement; how many rows it wrote."""
    facts = merge(f for f in map(fact_of, events) if f is not None)
    if not facts:
        return 0
    columns: list[list[Any]] = [[] for _ in _COLUMNS]
    for fact in facts:
        for i, name in enumerate(_COLUMNS):
            value = getattr(fact, name)
            columns[i].append(clean_optional(value) if isinstance(value, str) else value)
    await conn.execute(_UPSERT, *columns)
    return len(facts)


async def read_attempts(conn: asyncpg.Connection, job_id: str) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            f"SELECT {', '.join(_COLUMNS[1:])} FROM attempts WHERE job_id = $1 ORDER BY attempt",
            job_id,
        )
    )
