"""Retention: forget prompts and responses of jobs finished more than N days ago."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

# What a job asked and what it answered lives in four places: the job's row (prompt,
# messages), its result (response, parsed response, tool calls), its chunks, and the facts
# it was built from (`events.payload`: the accepted spec, the completed response). All four
# are cleared; the figures (tokens, cost, timings) stay for analytics.
_TEXT_FIELDS = "#- '{data,prompt}' #- '{data,messages}' #- '{data,response}' #- '{data,tool_calls}'"
_SWEEP = f"""
WITH old AS (
    SELECT job_id FROM jobs
    WHERE finished_at < now() - $1::interval AND (
        prompt IS NOT NULL
        OR messages IS NOT NULL
        OR EXISTS (SELECT 1 FROM results r WHERE r.job_id = jobs.job_id
                   AND (r.response IS NOT NULL OR r.tool_calls IS NOT NULL))
        OR EXISTS (SELECT 1 FROM chunks c WHERE c.job_id = jobs.job_id))
    ORDER BY finished_at LIMIT $2
), prompts AS (
    UPDATE jobs SET prompt = NULL, messages = NULL, updated_at = now()
    WHERE job_id IN (SELECT job_id FROM old)
), responses AS (
    UPDATE results SET response = NULL, parsed_response = NULL, tool_calls = NULL
    WHERE job_id IN (SELECT job_id FROM old)
), texts AS (
    DELETE FROM chunks WHERE job_id IN (SELECT job_id FROM old)
), facts AS (
    UPDATE events SET payload = payload {_TEXT_FIELDS}
    WHERE job_id IN (SELECT job_id FROM old) AND type IN ('job.accepted', 'job.completed')
)
SELECT count(*) FROM old
"""


async def sweep(conn: asyncpg.Connection, days: float, *, limit: int = 5000) -> int:
    """Clear up to `limit` jobs' texts; returns how many (call again while it returns `limit`)."""
    cleared = await conn.fetchval(_SWEEP, timedelta(days=days), limit)
    return int(cleared or 0)
