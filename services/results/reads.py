"""The read side's queries: one job, a page of jobs, a job's stream snapshot and result.

Every query takes the caller's principal: a user reads only rows with their own
user_id, an admin reads all. A job whose `job.accepted` has not arrived yet has
no owner and stays invisible until it does.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services.results.attempts import read_attempts
from shared.api import (
    AttemptView,
    JobInputs,
    JobPage,
    JobResult,
    JobView,
    Progress,
    StreamSnapshot,
)
from shared.auth import Principal
from shared.contracts import JobAccepted, TokenUsage, parse_record
from shared.lifecycle import JobStatus
from shared.text import clean_text
from shared.topics import Priority

# A served cursor is ~100 characters; anything far longer was not served by us.
MAX_CURSOR_CHARS = 1024


class BadCursor(ValueError):
    """The cursor is not one this service handed out."""


@dataclass(frozen=True, slots=True)
class ListFilter:
    status: JobStatus | None = None
    job_type: str | None = None
    priority: Priority | None = None
    since: datetime | None = None
    until: datetime | None = None
    user_id: str | None = None  # admin only; a user always lists their own
    limit: int = 50
    cursor: str | None = None


def encode_cursor(submitted_at: datetime, job_id: str) -> str:
    raw = json.dumps([submitted_at.isoformat(), job_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    if len(cursor) > MAX_CURSOR_CHARS:
        raise BadCursor("cursor is not valid")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decoded = json.loads(raw)
        if not isinstance(decoded, list) or len(decoded) != 2:
            raise BadCursor("cursor is not valid")
        moment, job_id = decoded
        at = datetime.fromisoformat(moment)
    except (binascii.Error, ValueError, TypeError, RecursionError) as exc:
        raise BadCursor("cursor is not valid") from exc
    # Our cursors hold stored (clean) job ids; a NUL or lone surrogate could not reach SQL.
    if not isinstance(job_id, str) or at.tzinfo is None or clean_text(job_id) != job_id:
        raise BadCursor("cursor is not valid")
    return at, job_id


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _ms_since(moment: datetime | None, now: datetime) -> float | None:
    return None if moment is None else max(0.0, (now - moment).total_seconds() * 1000)


def _view(
    row: asyncpg.Record,
    *,
    progress: Progress | None = None,
    position: int | None = None,
    asked: bool = False,
    retried_by: list[str] | None = None,
) -> JobView:
    """One job; `asked` adds what was asked (prompt or messages, config), which a list of
    jobs leaves out: a page of whole conversations would be mostly text nobody listed."""
    status = JobStatus(row["status"])
    waited = row["queue_wait_ms"]
    if status is JobStatus.QUEUED:
        waited = _ms_since(row["submitted_at"], datetime.now(UTC))
    return JobView(
        job_id=row["job_id"],
        user_id=row["user_id"],
        status=status,
        job_type=row["job_type"],
        priority=Priority(row["priority"]),
        attempt=row["attempt"],
        model=row["model"],
        submitted_at=row["submitted_at"],
        started_at=row["started_at"],
        first_token_at=row["first_token_at"],
        finished_at=row["finished_at"],
        queue_position=position,
        waited_ms=waited,
        progress=progress,
        error=row["error_reason"],
        metadata=_json(row["metadata"]) or {},
        prompt=row["prompt"] if asked else None,
        messages=_json(row["messages"]) if asked else None,
        config=_json(row["config"]) if asked else None,
        retry_of=row["retry_of"],
        retried_by=retried_by,
    )


def _visible(principal: Principal, first_param: int) -> tuple[str, list[Any]]:
    if principal.is_admin:
        return "j.user_id IS NOT NULL", []
    return f"j.user_id = ${first_param}", [principal.user_id]


async def _job_row(
    conn: asyncpg.Connection, principal: Principal, job_id: str
) -> asyncpg.Record | None:
    where, args = _visible(principal, 2)
    return await conn.fetchrow(
        f"SELECT j.* FROM jobs j WHERE j.job_id = $1 AND {where}", job_id, *args
    )


async def _current_attempt(conn: asyncpg.Connection, job: asyncpg.Record) -> tuple[int, int, int]:
    """(attempt, tokens, last_seq) of the job's current attempt's stored chunks."""
    row = await conn.fetchrow(
        """SELECT attempt, sum(tokens)::int AS tokens, max(seq) AS last_seq FROM chunks
           WHERE job_id = $1 AND attempt = (SELECT max(attempt) FROM chunks WHERE job_id = $1)
           GROUP BY attempt""",
        job["job_id"],
    )
    if row is None:
        return job["attempt"], 0, -1
    if row["attempt"] < job["attempt"]:
        # A continuing attempt streams under the number of the attempt it continues.
        continues = await conn.fetchval(
            "SELECT continues FROM attempts WHERE job_id = $1 AND attempt = $2",
            job["job_id"],
            job["attempt"],
        )
        if continues != row["attempt"]:
            return job["attempt"], 0, -1
    return row["attempt"], row["tokens"], row["last_seq"]


async def get_job(conn: asyncpg.Connection, principal: Principal, job_id: str) -> JobView | None:
    row = await _job_row(conn, principal, job_id)
    if row is None:
        return None
    position = None
    if row["status"] == JobStatus.QUEUED.value:
        position = await conn.fetchval(
            """SELECT count(*) FROM jobs WHERE status = 'queued' AND priority = $1
               AND (submitted_at, job_id) < ($2, $3)""",
            row["priority"],
            row["submitted_at"],
            row["job_id"],
        )
    _, tokens, _ = await _current_attempt(conn, row)
    config = _json(row["config"]) or {}
    # max_completion_tokens, when set, is the bound sent instead of max_tokens.
    max_tokens = int(config.get("max_completion_tokens") or config.get("max_tokens") or 0)
    progress = None
    if max_tokens > 0:
        progress = Progress(
            tokens=tokens, max_tokens=max_tokens, ratio=min(1.0, tokens / max_tokens)
        )
    where, args = _visible(principal, 2)
    retries = await conn.fetch(
        f"""SELECT j.job_id FROM jobs j WHERE j.retry_of = $1 AND {where}
            ORDER BY j.submitted_at, j.job_id""",
        job_id,
        *args,
    )
    return _view(
        row,
        progress=progress,
        position=position,
        asked=True,
        retried_by=[r["job_id"] for r in retries],
    )


async def job_inputs(
    conn: asyncpg.Connection, principal: Principal, job_id: str
) -> JobInputs | None:
    """What a retry of the job needs: its owner, its status and the spec it was accepted with
    (the first accepted fact applied, as it was written). No spec once retention cleared the
    job's prompt: what was asked is then forgotten."""
    row = await _job_row(conn, principal, job_id)
    if row is None:
        return None
    spec = None
    if row["prompt"] is not None or row["messages"] is not None:
        payload = await conn.fetchval(
            """SELECT payload FROM events WHERE job_id = $1 AND type = 'job.accepted'
               AND applied ORDER BY occurred_at LIMIT 1""",
            job_id,
        )
        if payload is not None:
            accepted = parse_record(payload)
            if isinstance(accepted, JobAccepted):
                spec = accepted.data
    return JobInputs(
        job_id=row["job_id"], user_id=row["user_id"], status=JobStatus(row["status"]), spec=spec
    )


async def list_jobs(
    conn: asyncpg.Connection, principal: Principal, f: ListFilter, *, max_bytes: int
) -> JobPage:
    """A page of at most `f.limit` items and about `max_bytes` of JSON (at least one item)."""
    where, args = _visible(principal, 1)
    clauses = [where]

    def param(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if principal.is_admin and f.user_id is not None:
        clauses.append(f"j.user_id = {param(f.user_id)}")
    if f.status is not None:
        clauses.append(f"j.status = {param(f.status.value)}")
    if f.job_type is not None:
        clauses.append(f"j.job_type = {param(f.job_type)}")
    if f.priority is not None:
        clauses.append(f"j.priority = {param(f.priority.value)}")
    if f.since is not None:
        clauses.append(f"j.submitted_at >= {param(f.since)}")
    if f.until is not None:
        clauses.append(f"j.submitted_at < {param(f.until)}")
    if f.cursor is not None:
        at, job_id = decode_cursor(f.cursor)
        clauses.append(f"(j.submitted_at, j.job_id) < ({param(at)}, {param(job_id)})")
    rows = await conn.fetch(
        f"""SELECT j.* FROM jobs j WHERE {" AND ".join(clauses)}
            ORDER BY j.submitted_at DESC, j.job_id DESC LIMIT {param(f.limit + 1)}""",
        *args,
    )
    items: list[JobView] = []
    size = 0
    for row in rows[: f.limit]:
        view = _view(row)
        size += len(view.model_dump_json()) + 1  # the comma between items
        if items and size > max_bytes:
            break  # the rest comes with the next page
        items.append(view)
    next_cursor = None
    if len(rows) > len(items):
        last = rows[len(items) - 1]
        next_cursor = encode_cursor(last["submitted_at"], last["job_id"])
    return JobPage(items=items, next_cursor=next_cursor)


async def stream_snapshot(
    conn: asyncpg.Connection, principal: Principal, job_id: str
) -> StreamSnapshot | None:
    row = await _job_row(conn, principal, job_id)
    if row is None:
        return None
    attempt, _, _ = await _current_attempt(conn, row)
    chunks = await conn.fetchrow(
        """SELECT coalesce(string_agg(text, '' ORDER BY seq), '') AS text,
                  coalesce(sum(tokens), 0)::int AS tokens, coalesce(max(seq), -1) AS last_seq
           FROM chunks WHERE job_id = $1 AND attempt = $2""",
        job_id,
        attempt,
    )
    assert chunks is not None  # an aggregate always answers one row
    status = JobStatus(row["status"])
    if status is JobStatus.COMPLETED:
        # The final event and the chunks come on different topics, so a completed job's
        # last chunks can be stored a moment after it: its text is then its result's.
        done = await conn.fetchrow(
            "SELECT response, chunks, completion_tokens FROM results WHERE job_id = $1",
            job_id,
        )
        if (
            done is not None
            and done["response"] is not None
            and (done["chunks"] or 0) > chunks["last_seq"] + 1
        ):
            return StreamSnapshot(
                job_id=job_id,
                status=status,
                attempt=attempt,
                last_seq=done["chunks"] - 1,
                text=done["response"],
                tokens=done["completion_tokens"] or 0,
            )
    return StreamSnapshot(
        job_id=job_id,
        status=status,
        attempt=attempt,
        last_seq=chunks["last_seq"],
        text=chunks["text"],
        tokens=chunks["tokens"],
    )


def _attempt_view(a: asyncpg.Record) -> AttemptView:
    usage = None
    if a["total_tokens"] is not None:
        usage = TokenUsage(
            prompt_tokens=a["prompt_tokens"] or 0,
            completion_tokens=a["completion_tokens"] or 0,
            total_tokens=a["total_tokens"],
            cached_tokens=a["cached_tokens"],
            reasoning_tokens=a["reasoning_tokens"],
        )
    return AttemptView(
        attempt=a["attempt"],
        upstream=a["upstream"],
        model=a["model"],
        continues=a["continues"],
        status=a["status"],
        usage=usage,
        usage_estimated=a["usage_estimated"],
        cost_usd=None if a["cost_usd"] is None else float(a["cost_usd"]),
        reason=a["reason"],
        started_at=a["started_at"],
        ended_at=a["ended_at"],
    )


def _billed(attempts: list[AttemptView]) -> TokenUsage | None:
    """Every attempt's usage summed; None before any attempt reported one (older records)."""
    used = [a.usage for a in attempts if a.usage is not None]
    if not used:
        return None
    return TokenUsage(
        prompt_tokens=sum(u.prompt_tokens for u in used),
        completion_tokens=sum(u.completion_tokens for u in used),
        total_tokens=sum(u.total_tokens for u in used),
    )


def _billed_cost(attempts: list[AttemptView]) -> float | None:
    """Every priced attempt's cost summed; None when none is priced."""
    costs = [a.cost_usd for a in attempts if a.cost_usd is not None]
    return round(sum(costs), 8) if costs else None


class NotFinished(Exception):
    def __init__(self, status: JobStatus) -> None:
        super().__init__(f"the job is {status.value}")
        self.status = status


async def get_result(
    conn: asyncpg.Connection, principal: Principal, job_id: str
) -> JobResult | None:
    """The job's result; raises `NotFinished` before it reached a final state."""
    row = await _job_row(conn, principal, job_id)
    if row is None:
        return None
    status = JobStatus(row["status"])
    if not status.is_final:
        raise NotFinished(status)
    r = await conn.fetchrow("SELECT * FROM results WHERE job_id = $1", job_id)
    attempts = [_attempt_view(a) for a in await read_attempts(conn, job_id)]
    common: dict[str, Any] = {
        "job_id": job_id,
        "status": status,
        "job_type": row["job_type"],
        "priority": Priority(row["priority"]),
        "attempt": row["attempt"],
        "model": row["model"],
        "queue_wait_ms": row["queue_wait_ms"],
        "error": row["error_reason"],
        "completed_at": row["finished_at"],
        "attempts": attempts,
        "billed_usage": _billed(attempts),
        "billed_cost_usd": _billed_cost(attempts),
        "messages": _json(row["messages"]),
    }
    if r is None:
        return JobResult(**common)
    return JobResult(
        **common,
        response=r["response"],
        parsed_response=_json(r["parsed_response"]),
        finish_reason=r["finish_reason"],
        usage=TokenUsage(
            prompt_tokens=r["prompt_tokens"],
            completion_tokens=r["completion_tokens"],
            total_tokens=r["total_tokens"],
            cached_tokens=r["cached_tokens"],
            reasoning_tokens=r["reasoning_tokens"],
        ),
        usage_estimated=r["usage_estimated"],
        estimated_cost_usd=(
            None if r["estimated_cost_usd"] is None else float(r["estimated_cost_usd"])
        ),
        processing_time_ms=r["processing_time_ms"],
        time_to_first_token_ms=r["ttft_ms"],
        tokens_per_second=r["tokens_per_second"],
        chunks=r["chunks"],
        severity_breakdown=_json(r["severity_breakdown"]),
        breakdown=_json(r["breakdown"]),
        parse_error=r["parse_error"],
        tool_calls=_json(r["tool_calls"]),
    )
