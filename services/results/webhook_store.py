"""The webhook tables (migration 0008): which jobs named a URL, each delivery and its tries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from shared.text import clean_text

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


async def remember_urls(conn: asyncpg.Connection, rows: Sequence[tuple[str, str, str]]) -> None:
    """(job_id, user_id, url) of accepted jobs; the first accepted fact of a job wins."""
    await conn.executemany(
        "INSERT INTO webhook_jobs (job_id, user_id, url) VALUES ($1, $2, $3)"
        " ON CONFLICT (job_id) DO NOTHING",
        [tuple(clean_text(v) for v in row) for row in rows],
    )


async def urls_of(conn: asyncpg.Connection, job_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """job_id -> (user_id, url) of those of `job_ids` that named a webhook."""
    rows = await conn.fetch(
        "SELECT job_id, user_id, url FROM webhook_jobs WHERE job_id = ANY($1::text[])",
        [clean_text(j) for j in job_ids],
    )
    return {r["job_id"]: (r["user_id"], r["url"]) for r in rows}


@dataclass(frozen=True, slots=True)
class DeliveryState:
    status: str
    attempts: int
    handed_on: int
    first_attempt_at: datetime | None


async def open_delivery(
    conn: asyncpg.Connection,
    *,
    webhook_id: str,
    job_id: str,
    user_id: str,
    url: str,
    event_type: str,
    first_attempt_at: datetime,
) -> DeliveryState:
    """The delivery's row, created pending on its first try."""
    await conn.execute(
        "INSERT INTO webhook_deliveries"
        " (webhook_id, job_id, user_id, url, event_type, status, first_attempt_at)"
        " VALUES ($1, $2, $3, $4, $5, 'pending', $6) ON CONFLICT (webhook_id) DO NOTHING",
        clean_text(webhook_id),
        clean_text(job_id),
        clean_text(user_id),
        clean_text(url),
        clean_text(event_type),
        first_attempt_at,
    )
    row = await conn.fetchrow(
        "SELECT status, attempts, handed_on, first_attempt_at FROM webhook_deliveries"
        " WHERE webhook_id = $1",
        clean_text(webhook_id),
    )
    assert row is not None
    return DeliveryState(row["status"], row["attempts"], row["handed_on"], row["first_attempt_at"])


@dataclass(frozen=True, slots=True)
class Tried:
    """One try: when, what came back (a status code, or an error), how long it took."""

    attempted_at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float


async def record_attempt(
    conn: asyncpg.Connection,
    webhook_id: str,
    attempt: int,
    tried: Tried,
    *,
    status: str,
    next_attempt_at: datetime | None,
) -> None:
    """Store a try and the delivery's state after it, in one transaction."""
    wid = clean_text(webhook_id)
    error = None if tried.error is None else clean_text(tried.error)[:1000]
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO webhook_attempts (webhook_id, attempt, attempted_at, status_code,"
            " error, duration_ms, next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            " ON CONFLICT (webhook_id, attempt) DO UPDATE SET attempted_at = EXCLUDED.attempted_at,"
            " status_code = EXCLUDED.status_code, error = EXCLUDED.error,"
            " duration_ms = EXCLUDED.duration_ms, next_attempt_at = EXCLUDED.next_attempt_at",
            wid,
            attempt,
            tried.attempted_at,
            tried.status_code,
            error,
            tried.duration_ms,
            next_attempt_at,
        )
        await conn.execute(
            "UPDATE webhook_deliveries SET status = $2, attempts = GREATEST(attempts, $3),"
            " next_attempt_at = $4, last_error = $5, updated_at = now() WHERE webhook_id = $1",
            wid,
            status,
            attempt,
            next_attempt_at,
            error,
        )


async def handed_on(conn: asyncpg.Connection, webhook_id: str, attempt: int) -> None:
    """The retry after try `attempt` is on the retry topic."""
    await conn.execute(
        "UPDATE webhook_deliveries SET handed_on = GREATEST(handed_on, $2) WHERE webhook_id = $1",
        clean_text(webhook_id),
        attempt,
    )


async def next_attempt_of(
    conn: asyncpg.Connection, webhook_id: str, attempt: int
) -> datetime | None:
    value: datetime | None = await conn.fetchval(
        "SELECT next_attempt_at FROM webhook_attempts WHERE webhook_id = $1 AND attempt = $2",
        clean_text(webhook_id),
        attempt,
    )
    return value


async def deliveries_of(conn: asyncpg.Connection, job_id: str) -> list[dict[str, Any]]:
    """A job's deliveries, each with its tries in order: what `GET …/webhooks` shows."""
    deliveries = await conn.fetch(
        "SELECT webhook_id, url, event_type, status, attempts, first_attempt_at,"
        " next_attempt_at, last_error FROM webhook_deliveries WHERE job_id = $1"
        " ORDER BY created_at, webhook_id",
        job_id,
    )
    tries = await conn.fetch(
        "SELECT a.webhook_id, a.attempt, a.attempted_at, a.status_code, a.error, a.duration_ms,"
        " a.next_attempt_at FROM webhook_attempts a JOIN webhook_deliveries d USING (webhook_id)"
        " WHERE d.job_id = $1 ORDER BY a.webhook_id, a.attempt",
        job_id,
    )
    by_id: dict[str, list[dict[str, Any]]] = {}
    for t in tries:
        by_id.setdefault(t["webhook_id"], []).append(
            {k: t[k] for k in t.keys() if k != "webhook_id"}  # noqa: SIM118  # asyncpg.Record
        )
    return [{**dict(d), "attempt_log": by_id.get(d["webhook_id"], [])} for d in deliveries]


async def owner_of(conn: asyncpg.Connection, job_id: str) -> str | None:
    """The job's owner as the webhook tables know it (the jobs row may not be there yet)."""
    value: str | None = await conn.fetchval(
        "SELECT user_id FROM webhook_jobs WHERE job_id = $1", job_id
    )
    return value
