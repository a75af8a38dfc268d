"""Writes one batch of events and chunks to PostgreSQL in one transaction, idempotently.

Chunks go in with one array INSERT … ON CONFLICT DO NOTHING; lifecycle events are
deduplicated by event_id, applied to the jobs they touch (locked for the
transaction), and the changed jobs and new results are upserted with executemany.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from services.results.projection import JobRow, ResultRow, apply, aware, result_of
from services.results.settings import ModelPrice
from shared.contracts import JobAccepted, JobCompleted, LifecycleEvent, TokenChunk
from shared.jobtypes import parse_response
from shared.lifecycle import JobStatus

JOB_COLUMNS = (
    "job_id",
    "status",
    "user_id",
    "job_type",
    "priority",
    "prompt",
    "config",
    "metadata",
    "model",
    "attempt",
    "submitted_at",
    "started_at",
    "attempt_started_at",
    "first_token_at",
    "finished_at",
    "queue_wait_ms",
    "error_reason",
    "error_type",
)
_JSON_COLUMNS = {"config", "metadata"}
_UPSERT_JOB = "INSERT INTO jobs ({cols}) VALUES ({vals}) ON CONFLICT (job_id) DO UPDATE SET {sets}, updated_at = now()".format(  # noqa: E501
    cols=", ".join(JOB_COLUMNS),
    vals=", ".join(
        f"${i}::jsonb" if c in _JSON_COLUMNS else f"${i}" for i, c in enumerate(JOB_COLUMNS, 1)
    ),
    sets=", ".join(f"{c} = EXCLUDED.{c}" for c in JOB_COLUMNS[1:]),
)
RESULT_COLUMNS = (
    "job_id",
    "attempt",
    "model",
    "response",
    "parsed_response",
    "parse_error",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "estimated_cost_usd",
    "processing_time_ms",
    "ttft_ms",
    "tokens_per_second",
    "queue_wait_ms",
    "chunks",
    "severity_breakdown",
    "completed_at",
)
_UPSERT_RESULT = "INSERT INTO results ({cols}) VALUES ({vals}) ON CONFLICT (job_id) DO UPDATE SET {sets}".format(  # noqa: E501
    cols=", ".join(RESULT_COLUMNS),
    vals=", ".join(
        f"${i}::jsonb" if c in ("parsed_response", "severity_breakdown") else f"${i}"
        for i, c in enumerate(RESULT_COLUMNS, 1)
    ),
    sets=", ".join(f"{c} = EXCLUDED.{c}" for c in RESULT_COLUMNS[1:]),
)
_INSERT_CHUNKS = """
INSERT INTO chunks (job_id, attempt, seq, text, tokens, first_token_at, emitted_at)
SELECT * FROM unnest($1::text[], $2::int[], $3::int[], $4::text[], $5::int[],
                     $6::timestamptz[], $7::timestamptz[])
ON CONFLICT (job_id, attempt, seq) DO NOTHING
"""
_INSERT_EVENTS = """
INSERT INTO events (event_id, job_id, type, occurred_at, applied, payload)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::bool[],
                     $6::jsonb[])
ON CONFLICT (event_id) DO NOTHING
"""
# Sorted, so two instances locking overlapping jobs (during a rebalance) cannot deadlock.
_LOCK_JOBS = """
SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT hashtextextended(j, 0) AS k
FROM unnest($1::text[]) AS j ORDER BY k) AS keys
"""
_FIRST_TOKEN = """
UPDATE jobs SET first_token_at = c.at
FROM unnest($1::text[], $2::int[], $3::timestamptz[]) AS c(job_id, attempt, at)
WHERE jobs.job_id = c.job_id AND jobs.attempt = c.attempt AND jobs.first_token_at IS NULL
"""


def _text(value: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; a model may still emit one.
    return value.replace("\x00", "") if value is not None and "\x00" in value else value


def _json(value: Any) -> str | None:
    if value is None:
        return None
    # jsonb rejects \u0000 as well.
    return json.dumps(value, default=str).replace("\\u0000", "")


@dataclass
class BatchOutcome:
    """What one batch wrote: new events by type, new chunks, moves the state machine refused."""

    events: Counter[str] = field(default_factory=Counter)
    chunks: int = 0
    ignored: int = 0
    results: list[ResultRow] = field(default_factory=list)  # completions new to the store


def _job_from_record(record: asyncpg.Record) -> JobRow:
    values = {c: record[c] for c in JOB_COLUMNS}
    values["status"] = JobStatus(values["status"]) if values["status"] else None
    for column in _JSON_COLUMNS:
        if isinstance(values[column], str):
            values[column] = json.loads(values[column])
    values["metadata"] = values["metadata"] or {}
    return JobRow(**values)


def _job_args(job: JobRow) -> tuple[Any, ...]:
    row = []
    for column in JOB_COLUMNS:
        value = getattr(job, column)
        if column in _JSON_COLUMNS:
            value = _json(value)
        elif column == "status":
            value = value.value if value is not None else None
        elif column == "prompt":
            value = _text(value)
        row.append(value)
    return tuple(row)


def _result_args(result: ResultRow) -> tuple[Any, ...]:
    row = []
    for column in RESULT_COLUMNS:
        value = getattr(result, column)
        if column in ("parsed_response", "severity_breakdown"):
            value = _json(value)
        elif column in ("response", "parse_error"):
            value = _text(value)
        row.append(value)
    return tuple(row)


async def write_batch(
    conn: asyncpg.Connection,
    events: Sequence[LifecycleEvent],
    chunks: Sequence[TokenChunk],
    price_of: Callable[[str | None], ModelPrice],
) -> BatchOutcome:
    """Write one batch in one transaction; the same batch written twice changes nothing."""
    outcome = BatchOutcome()
    async with conn.transaction():
        if chunks:
            outcome.chunks = await _write_chunks(conn, chunks)
        if events:
            await _write_events(conn, events, price_of, outcome)
        if chunks:
            firsts = [c for c in chunks if c.data.seq == 0]
            if firsts:
                await conn.execute(
                    _FIRST_TOKEN,
                    [c.job_id for c in firsts],
                    [c.data.attempt for c in firsts],
                    [aware(c.data.first_token_at) for c in firsts],
                )
    return outcome


async def _write_chunks(conn: asyncpg.Connection, chunks: Sequence[TokenChunk]) -> int:
    unique = {(c.job_id, c.data.attempt, c.data.seq): c for c in chunks}
    rows = list(unique.values())
    status = await conn.execute(
        _INSERT_CHUNKS,
        [c.job_id for c in rows],
        [c.data.attempt for c in rows],
        [c.data.seq for c in rows],
        [_text(c.data.text) or "" for c in rows],
        [c.data.tokens for c in rows],
        [aware(c.data.first_token_at) for c in rows],
        [aware(c.data.emitted_at) for c in rows],
    )
    return int(status.rsplit(" ", 1)[1])


async def _write_events(
    conn: asyncpg.Connection,
    events: Sequence[LifecycleEvent],
    price_of: Callable[[str | None], ModelPrice],
    outcome: BatchOutcome,
) -> None:
    job_ids = sorted({e.job_id for e in events})
    await conn.execute(_LOCK_JOBS, job_ids)
    seen = {
        r["event_id"]
        for r in await conn.fetch(
            "SELECT event_id FROM events WHERE event_id = ANY($1::uuid[])",
            [e.event_id for e in events],
        )
    }
    jobs = {
        r["job_id"]: _job_from_record(r)
        for r in await conn.fetch("SELECT * FROM jobs WHERE job_id = ANY($1::text[])", job_ids)
    }
    fresh: list[tuple[LifecycleEvent, bool]] = []
    changed: dict[str, JobRow] = {}
    results: dict[str, ResultRow] = {}
    late_accepted: set[str] = set()
    for event in events:
        if event.event_id in seen:
            continue  # a replay: already applied, or already refused
        seen.add(event.event_id)
        job = jobs.setdefault(event.job_id, JobRow(event.job_id))
        was_typed = job.job_type is not None
        applied = apply(job, event)
        fresh.append((event, applied))
        if not applied:
            outcome.ignored += 1
            continue
        outcome.events[event.type] += 1
        changed[job.job_id] = job
        if isinstance(event, JobCompleted):
            results[job.job_id] = result_of(job, event, price_of(event.data.model))
            late_accepted.discard(job.job_id)
        elif (
            isinstance(event, JobAccepted)
            and not was_typed
            and job.status is JobStatus.COMPLETED
            and job.job_id not in results
        ):
            late_accepted.add(job.job_id)
    if fresh:
        await conn.execute(
            _INSERT_EVENTS,
            [e.event_id for e, _ in fresh],
            [e.job_id for e, _ in fresh],
            [e.type for e, _ in fresh],
            [aware(e.occurred_at) for e, _ in fresh],
            [applied for _, applied in fresh],
            [_text(e.model_dump_json()) for e, _ in fresh],
        )
    if changed:
        await conn.executemany(_UPSERT_JOB, [_job_args(j) for j in changed.values()])
    if results:
        await conn.executemany(_UPSERT_RESULT, [_result_args(r) for r in results.values()])
        outcome.results.extend(results.values())
    if late_accepted:
        await _reparse(conn, [jobs[j] for j in sorted(late_accepted)])


async def _reparse(conn: asyncpg.Connection, jobs: list[JobRow]) -> None:
    """The job type arrived after the completion: parse the stored response now."""
    stored = {
        r["job_id"]: r["response"]
        for r in await conn.fetch(
            "SELECT job_id, response FROM results WHERE job_id = ANY($1::text[])",
            [j.job_id for j in jobs],
        )
    }
    rows = []
    for job in jobs:
        if job.job_id not in stored:
            continue
        parsed = parse_response(job.job_type or "", stored[job.job_id])
        rows.append(
            (
                job.job_id,
                _json(parsed.value),
                _text(parsed.error),
                _json(parsed.severity_breakdown),
                job.queue_wait_ms,
            )
        )
    if rows:
        await conn.executemany(
            "UPDATE results SET parsed_response = $2::jsonb, parse_error = $3,"
            " severity_breakdown = $4::jsonb, queue_wait_ms = $5 WHERE job_id = $1",
            rows,
        )
