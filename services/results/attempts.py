"""The attempts of a job as its lifecycle events tell them, and their table.

Each event that names an attempt says something of it: where it ran (started), how it
ended and what it used (retrying, completed, failed, cancelled). The facts of one batch
are merged per attempt first, so one upsert writes each attempt row once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from services.results.projection import aware, cost_of
from shared.contracts import (
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobRetrying,
    JobStarted,
    LifecycleEvent,
    TokenUsage,
)
from shared.prices import Price
from shared.text import clean_optional

# The price of a model on an upstream (either may be unknown); None: priced nowhere.
PriceOf = Callable[[str | None, str | None], Price | None]


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
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    usage_estimated: bool = False
    cost_usd: Decimal | None = None
    reason: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None


def _used(
    usage: TokenUsage | None, model: str | None, upstream: str | None, price_of: PriceOf
) -> dict[str, Any]:
    """The usage columns of an attempt, and what it cost on the upstream that served it."""
    if usage is None:
        return {}
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "cached_tokens": usage.cached_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "cost_usd": cost_of(price_of(model, upstream), usage),
    }


def fact_of(event: LifecycleEvent, price_of: PriceOf) -> AttemptFact | None:
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
            usage_estimated=c.usage_estimated,
            ended_at=at,
            **_used(c.usage, c.model, c.upstream, price_of),
        )
    if isinstance(event, JobRetrying | JobFailed | JobCancelled):
        status = {JobRetrying: "failed", JobFailed: "failed", JobCancelled: "cancelled"}[
            type(event)
        ]
        if isinstance(event, JobRetrying) and event.data.preempted:
            status = "preempted"  # stopped for an urgent job: it did not fail
        e = event.data
        usage = e.usage
        return AttemptFact(
            job_id,
            e.attempt,
            status,
            e.upstream,
            e.model,
            e.continues,
            usage_estimated=e.usage_estimated,
            reason=e.reason,
            ended_at=at,
            **_used(usage, e.model, e.upstream, price_of),
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
    "cached_tokens",
    "reasoning_tokens",
    "usage_estimated",
    "cost_usd",
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
    "int",
    "int",
    "bool",
    "numeric",
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


async def write_attempts(
    conn: asyncpg.Connection, events: Iterable[LifecycleEvent], price_of: PriceOf
) -> int:
    """Upsert the attempts `events` speak of, in one statement; how many rows it wrote."""
    facts = merge(f for f in (fact_of(e, price_of) for e in events) if f is not None)
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
