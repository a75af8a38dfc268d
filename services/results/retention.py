"""Retention: forget prompts and responses of jobs finished more than N days ago."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

_SWEEP = """
WITH old AS (
    SELECT job_id FROM jobs
    WHERE finished_at < now() - $1::interval AND (
        prompt IS NOT NULL
        OR EXISTS (SELECT 1 FROM results r WHERE r.job_id = jobs.job_id AND r.response IS NOT NULL)
        OR EXISTS (SELECT 1 FROM chunks c WHERE c.job_id = jobs.job_id))
    ORDER BY finished_at LIMIT $2
), prompts AS (
    UPDATE jobs SET prompt = NULL, updated_at = now() WHERE job_id IN (SELECT job_id FROM old)
), responses AS (
    UPDATE results SET response = NULL, parsed_response = NULL
    WHERE job_id IN (SELECT job_id FROM old)
), texts AS (
    DELETE FROM chunks WHERE job_id IN (SELECT job_id FROM old)
)
SELECT count(*) FROM old
"""


async def sweep(conn: asyncpg.Connection, days: float, *, limit: int = 5000) -> int:
    """Clear up to `limit` jobs' texts; returns how many (call again while it returns `limit`)."""
    cleared = await conn.fetchval(_SWEEP, timedelta(days=days), limit)
    return int(cleared or 0)
