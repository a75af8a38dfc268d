"""Writes one batch of events and chunks to PostgreSQL in one transaction, idempotently.

Every table is written the same way: the batch's rows are COPYed (binary) into a
temporary staging table of this connection, then moved with one INSERT … SELECT …
ON CONFLICT, so a batch costs a handful of statements whatever its size. Chunks are
deduplicated on (job_id, attempt, seq); lifecycle events by event_id, applied to the
jobs they touch (locked for the transaction), and the changed jobs and new results
are upserted. A failed or cancelled job's result is what its last attempt streamed,
rebuilt whenever a chunk of that attempt arrives after the final fact. Every string
is cleaned by `shared.text` on its way in: PostgreSQL refuses NUL and lone surrogates.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from services.results.attempts import write_attempts
from services.results.decode import ChunkRow, StoredEvent
from services.results.projection import (
    JobRow,
    ResultRow,
    Rules,
    Streamed,
    apply,
    aware,
    owner_conflict,
    partial_result_of,
    result_of,
)
from shared.contracts import (
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobFailed,
    LifecycleEvent,
    parse_record,
)
from shared.jobtypes import ParsedResponse
from shared.lifecycle import JobStatus
from shared.text import clean_json, clean_optional, clean_text

log = logging.getLogger(__name__)

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
    "messages",
    "retry_of",
)
_JSON_COLUMNS = {"config", "metadata", "messages"}
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
    "usage_estimated",
    "tool_calls",
    "cached_tokens",
    "reasoning_tokens",
    "breakdown",
)
CHUNK_COLUMNS = ChunkRow._fields
EVENT_COLUMNS = ("event_id", "job_id", "type", "occurred_at", "applied", "payload")


def _staging(table: str) -> str:
    return f"{table}_staging"


_STAGED = {
    "jobs": JOB_COLUMNS,
    "results": RESULT_COLUMNS,
    "chunks": CHUNK_COLUMNS,
    "events": EVENT_COLUMNS,
}
# The staging tables have the columns (and types) of their tables and no constraints;
# IF NOT EXISTS makes this one cheap round trip per batch on a connection that has them.
_CREATE_STAGING = "; ".join(
    f"CREATE TEMP TABLE IF NOT EXISTS {_staging(table)} ON COMMIT DELETE ROWS AS"
    f" SELECT {', '.join(columns)} FROM {table} WITH NO DATA"
    for table, columns in _STAGED.items()
)


def _move(table: str, conflict: str) -> str:
    """Empty `table`'s staging table into it: a table may be staged twice in one batch."""
    cols = ", ".join(_STAGED[table])
    return (
        f"WITH staged AS (DELETE FROM {_staging(table)} RETURNING *)"
        f" INSERT INTO {table} ({cols}) SELECT {cols} FROM staged ON CONFLICT {conflict}"
    )


_UPSERT_JOB = _move(
    "jobs",
    "(job_id) DO UPDATE SET {sets}, updated_at = now()".format(
        # The first accepted fact fixed the owner; no later write may change it.
        sets=", ".join(
            "user_id = COALESCE(jobs.user_id, EXCLUDED.user_id)"
            if c == "user_id"
            else f"{c} = EXCLUDED.{c}"
            for c in JOB_COLUMNS[1:]
        )
    ),
)
_UPSERT_RESULT = _move(
    "results",
    "(job_id) DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in RESULT_COLUMNS[1:]),
)
_INSERT_CHUNKS = _move("chunks", "(job_id, attempt, seq) DO NOTHING")
_INSERT_EVENTS = _move("events", "(event_id) DO NOTHING")
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


async def _copy_upsert(
    conn: asyncpg.Connection, table: str, rows: Sequence[tuple[Any, ...]], upsert: str
) -> int:
    """Stage `rows` with COPY, then move them into `table`; the rows it inserted or updated."""
    await conn.copy_records_to_table(_staging(table), records=rows, columns=_STAGED[table])
    status = await conn.execute(upsert)
    return int(status.rsplit(" ", 1)[1])


# The final facts whose attempt's chunks make a partial result.
_PARTIAL_TYPES = ("job.failed", "job.cancelled")
_STREAMED = """
SELECT c.job_id, c.attempt, string_agg(c.text, '' ORDER BY c.seq) AS text,
       coalesce(sum(c.tokens), 0)::bigint AS tokens, count(*)::int AS chunks
FROM chunks c JOIN unnest($1::text[], $2::int[]) AS k(job_id, attempt)
  ON c.job_id = k.job_id AND c.attempt = k.attempt
GROUP BY c.job_id, c.attempt
"""
# Jobs that already ended failed or cancelled, with the fact that ended them.
_ENDED = """
SELECT j.*, e.payload AS final_payload FROM jobs j
JOIN LATERAL (SELECT payload FROM events e
              WHERE e.job_id = j.job_id AND e.applied AND e.type = ANY($2::text[])
              ORDER BY e.occurred_at DESC LIMIT 1) e ON true
WHERE j.job_id = ANY($1::text[]) AND j.status IN ('failed', 'cancelled')
"""


def _text(value: str | None) -> str | None:
    return clean_optional(value)


def _json(value: Any) -> str | None:
    """jsonb text of `value`, its strings cleaned; NaN and infinities are refused (ValueError)."""
    if value is None:
        return None
    return json.dumps(clean_json(value), default=str, allow_nan=False)


@dataclass
class BatchOutcome:
    """What one batch wrote: new events by type, new chunks, moves the state machine refused."""

    events: Counter[str] = field(default_factory=Counter)
    chunks: int = 0
    ignored: int = 0
    owner_conflicts: int = 0  # accepted facts that named another owner, refused
    results: list[ResultRow] = field(default_factory=list)  # completions new to the store
    partial_results: int = 0  # failed or cancelled jobs' results (re)written


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
        elif isinstance(value, str):
            value = clean_text(value)
        row.append(value)
    return tuple(row)


def _result_args(result: ResultRow) -> tuple[Any, ...]:
    row = []
    for column in RESULT_COLUMNS:
        value = getattr(result, column)
        if column in ("parsed_response", "severity_breakdown", "tool_calls", "breakdown"):
            value = _json(value)
        elif isinstance(value, str):
            value = clean_text(value)
        row.append(value)
    return tuple(row)


async def write_batch(
    conn: asyncpg.Connection,
    events: Sequence[StoredEvent],
    chunks: Sequence[ChunkRow],
    rules: Rules,
) -> BatchOutcome:
    """Write one batch in one transaction; the same batch written twice changes nothing.

    Chunk rows come cleaned (`services.results.decode`); events are cleaned here.
    """
    # Nearly always every chunk of a batch is new, and a plain COPY into the table costs
    # the server half of what the upsert does: the first try does that. A batch holding
    # a chunk already stored (a replay after a crash or a rebalance, or the same chunk
    # twice) aborts on its first statement and is written again with the staged upsert.
    try:
        return await _write_batch(conn, events, chunks, rules, new_chunks=True)
    except asyncpg.UniqueViolationError:
        return await _write_batch(conn, events, chunks, rules, new_chunks=False)


async def _write_batch(
    conn: asyncpg.Connection,
    events: Sequence[StoredEvent],
    chunks: Sequence[ChunkRow],
    rules: Rules,
    *,
    new_chunks: bool,
) -> BatchOutcome:
    outcome = BatchOutcome()
    async with conn.transaction():
        await conn.execute(_CREATE_STAGING)
        if chunks and new_chunks:
            await conn.copy_records_to_table("chunks", records=chunks, columns=CHUNK_COLUMNS)
            outcome.chunks = len(chunks)
        elif chunks:
            # DO NOTHING skips the second of a key within the batch as well.
            outcome.chunks = await _copy_upsert(conn, "chunks", chunks, _INSERT_CHUNKS)
        partials: set[str] = set()
        if events:
            partials = await _write_events(conn, events, rules, outcome)
        if chunks:
            late = {c.job_id for c in chunks} - partials
            if late:
                await _rebuild_partials(conn, sorted(late), chunks, rules, outcome)
            firsts = [c for c in chunks if c.seq == 0]
            if firsts:
                await conn.execute(
                    _FIRST_TOKEN,
                    [c.job_id for c in firsts],
                    [c.attempt for c in firsts],
                    [c.first_token_at for c in firsts],
                )
    return outcome


async def _write_events(
    conn: asyncpg.Connection,
    stored: Sequence[StoredEvent],
    rules: Rules,
    outcome: BatchOutcome,
) -> set[str]:
    """Apply and store `events`; returns the jobs whose partial result it wrote."""
    events = [s.event for s in stored]
    raw = {s.event.event_id: s.raw for s in stored}
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
    ended: dict[str, JobFailed | JobCancelled] = {}
    for event in events:
        if event.event_id in seen:
            continue  # a replay: already applied, or already refused
        seen.add(event.event_id)
        job = jobs.setdefault(event.job_id, JobRow(event.job_id))
        was_typed = job.job_type is not None
        if owner_conflict(job, event):
            outcome.owner_conflicts += 1
            assert isinstance(event, JobAccepted)
            log.warning(
                "refused accepted fact naming owner %r: the job belongs to %r",
                event.data.user_id,
                job.user_id,
                extra={"job_id": job.job_id, "trace_id": event.trace_id},
            )
        applied = apply(job, event)
        fresh.append((event, applied))
        if not applied:
            outcome.ignored += 1
            continue
        outcome.events[event.type] += 1
        changed[job.job_id] = job
        if isinstance(event, JobCompleted):
            results[job.job_id] = result_of(job, event, rules)
            late_accepted.discard(job.job_id)
        elif isinstance(event, JobFailed | JobCancelled):
            ended[job.job_id] = event
        elif (
            isinstance(event, JobAccepted)
            and not was_typed
            and job.status is JobStatus.COMPLETED
            and job.job_id not in results
        ):
            late_accepted.add(job.job_id)
    if fresh:
        rows = [
            (
                e.event_id,
                e.job_id,
                e.type,
                aware(e.occurred_at),
                applied,
                # The record's own text where it is valid jsonb (decode.py), else the
                # python dump: a lone surrogate cannot pass model_dump_json.
                raw[e.event_id] or _json(e.model_dump(mode="json")),
            )
            for e, applied in fresh
        ]
        await _copy_upsert(conn, "events", rows, _INSERT_EVENTS)
    if changed:
        await _copy_upsert(conn, "jobs", [_job_args(j) for j in changed.values()], _UPSERT_JOB)
        # After the jobs rows: an attempt row references its job.
        await write_attempts(conn, [e for e, applied in fresh if applied], rules.price_of)
    if results:
        rows = [_result_args(r) for r in results.values()]
        await _copy_upsert(conn, "results", rows, _UPSERT_RESULT)
        outcome.results.extend(results.values())
    if late_accepted:
        await _reparse(conn, [jobs[j] for j in sorted(late_accepted)], rules)
    if ended:
        await _write_partials(conn, [(jobs[j], e) for j, e in ended.items()], rules, outcome)
    return set(ended)


def _stream_attempt(event: JobFailed | JobCancelled) -> int:
    """The attempt number an attempt's chunks carry: a continuing attempt's are its stream's."""
    return event.data.continues if event.data.continues is not None else event.data.attempt


async def _write_partials(
    conn: asyncpg.Connection,
    ended: Sequence[tuple[JobRow, JobFailed | JobCancelled]],
    rules: Rules,
    outcome: BatchOutcome,
) -> None:
    """Store what each ended attempt streamed: its chunks' text, tokens and cost."""
    streamed = {
        (r["job_id"], r["attempt"]): Streamed(r["text"], int(r["tokens"]), r["chunks"])
        for r in await conn.fetch(
            _STREAMED, [j.job_id for j, _ in ended], [_stream_attempt(e) for _, e in ended]
        )
    }
    rows = []
    for job, event in ended:
        got = streamed.get((job.job_id, _stream_attempt(event)), Streamed())
        if got.chunks == 0 and event.data.usage is None:
            continue  # nothing was streamed: no result to keep
        model = event.data.model or job.model
        price = rules.price_of(model, event.data.upstream)
        rows.append(partial_result_of(job, event, got, price))
    if rows:
        await _copy_upsert(conn, "results", [_result_args(r) for r in rows], _UPSERT_RESULT)
        outcome.partial_results += len(rows)


async def _rebuild_partials(
    conn: asyncpg.Connection,
    job_ids: list[str],
    chunks: Sequence[ChunkRow],
    rules: Rules,
    outcome: BatchOutcome,
) -> None:
    """Chunks that reached us after their job failed or was cancelled join its result."""
    touched = {(c.job_id, c.attempt) for c in chunks}
    ended: list[tuple[JobRow, JobFailed | JobCancelled]] = []
    for record in await conn.fetch(_ENDED, job_ids, list(_PARTIAL_TYPES)):
        final = parse_record(record["final_payload"])
        if not isinstance(final, JobFailed | JobCancelled):
            continue
        if (record["job_id"], _stream_attempt(final)) in touched:
            ended.append((_job_from_record(record), final))
    if ended:
        await _write_partials(conn, ended, rules, outcome)


async def _reparse(conn: asyncpg.Connection, jobs: list[JobRow], rules: Rules) -> None:
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
        try:
            parsed = rules.job_types.parse_response(job.job_type or "", stored[job.job_id])
        except RecursionError:
            # The completion is stored already: refusing the accepted fact for it would leave
            # the job without an owner, so the response just stays unparsed.
            parsed = ParsedResponse(error="not JSON: nested too deeply to parse")
        rows.append(
            (
                job.job_id,
                _json(parsed.value),
                _text(parsed.error),
                _json(parsed.severity_breakdown),
                job.queue_wait_ms,
                _json(parsed.breakdown),
            )
        )
    if rows:
        await conn.executemany(
            "UPDATE results SET parsed_response = $2::jsonb, parse_error = $3,"
            " severity_breakdown = $4::jsonb, queue_wait_ms = $5, breakdown = $6::jsonb"
            " WHERE job_id = $1",
            rows,
        )
