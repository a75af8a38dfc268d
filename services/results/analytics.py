"""Analytics over stored jobs: counts, rates, percentiles (percentile_cont in SQL), totals."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from shared.api import Analytics, AnalyticsRow, Percentiles
from shared.auth import Principal
from shared.lifecycle import FINAL_STATUSES, JobStatus
from shared.topics import Priority

MAX_ROWS = 10_000
_MOMENT = "COALESCE(j.submitted_at, j.first_seen_at)"
_PERCENTILES = "percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY {})"


@dataclass(frozen=True, slots=True)
class AnalyticsQuery:
    since: datetime
    until: datetime
    group_by: tuple[str, ...] = ()
    bucket: str = "hour"


def _group_expr(key: str) -> str:
    if key == "bucket":
        return f"date_trunc($3, {_MOMENT}, 'UTC')"
    return f"j.{key}"


def _filter(principal: Principal) -> tuple[str, list[Any]]:
    where = f"{_MOMENT} >= $1 AND {_MOMENT} < $2 AND j.user_id IS NOT NULL"
    if principal.is_admin:
        return where, []
    return where + " AND j.user_id = $4", [principal.user_id]


def _rows_sql(keys: tuple[str, ...], where: str) -> str:
    groups = [f"{_group_expr(k)} AS {k}" for k in keys]
    statuses = [
        f"count(*) FILTER (WHERE j.status = '{s.value}') AS status_{s.value}" for s in JobStatus
    ]
    select = ",\n".join(
        [
            *groups,
            "count(*) AS jobs",
            *statuses,
            _PERCENTILES.format("j.queue_wait_ms") + " AS queue_wait",
            _PERCENTILES.format("r.ttft_ms") + " AS ttft",
            _PERCENTILES.format("r.processing_time_ms") + " AS duration",
            _PERCENTILES.format("r.tokens_per_second") + " AS tps",
            "coalesce(sum(r.prompt_tokens), 0)::bigint AS prompt_tokens",
            "coalesce(sum(r.completion_tokens), 0)::bigint AS completion_tokens",
            "coalesce(sum(r.total_tokens), 0)::bigint AS total_tokens",
            "coalesce(sum(r.estimated_cost_usd), 0) AS cost_usd",
            # A result of a model without a price has a null cost: the sum skips it, this counts it.
            "count(r.job_id) FILTER (WHERE r.estimated_cost_usd IS NULL) AS unpriced",
        ]
    )
    sql = f"SELECT {select}\nFROM jobs j LEFT JOIN results r ON r.job_id = j.job_id\nWHERE {where}"
    if keys:
        ordinals = ", ".join(str(i) for i in range(1, len(keys) + 1))
        sql += f"\nGROUP BY {ordinals} ORDER BY {ordinals} LIMIT {MAX_ROWS}"
    return sql


def _percentiles(values: list[float | None] | None) -> Percentiles:
    if not values:
        return Percentiles()
    return Percentiles(p50=values[0], p95=values[1], p99=values[2])


def _row(record: asyncpg.Record, keys: tuple[str, ...]) -> AnalyticsRow:
    by_status = {s.value: int(record[f"status_{s.value}"]) for s in JobStatus}
    final = sum(by_status[s.value] for s in FINAL_STATUSES)
    groups: dict[str, Any] = {k: record[k] for k in keys}
    if groups.get("priority") is not None:
        groups["priority"] = Priority(groups["priority"])
    return AnalyticsRow(
        **groups,
        jobs=record["jobs"],
        by_status=by_status,
        success_rate=by_status["completed"] / final if final else None,
        error_rate=by_status["failed"] / final if final else None,
        queue_wait_ms=_percentiles(record["queue_wait"]),
        time_to_first_token_ms=_percentiles(record["ttft"]),
        duration_ms=_percentiles(record["duration"]),
        tokens_per_second=_percentiles(record["tps"]),
        prompt_tokens=record["prompt_tokens"],
        completion_tokens=record["completion_tokens"],
        total_tokens=record["total_tokens"],
        cost_usd=float(record["cost_usd"]),
        unpriced_results=record["unpriced"],
    )


async def analytics(conn: asyncpg.Connection, principal: Principal, q: AnalyticsQuery) -> Analytics:
    where, extra = _filter(principal)
    args: list[Any] = [q.since, q.until, q.bucket, *extra]
    # Every statement gets the same parameters; ones it does not use are cast so types resolve.
    where = where + " AND $3::text IS NOT NULL"
    totals = await conn.fetchrow(_rows_sql((), where), *args)
    assert totals is not None  # an aggregate without GROUP BY answers one row
    rows = await conn.fetch(_rows_sql(q.group_by, where), *args) if q.group_by else []
    severity = await conn.fetch(
        f"""SELECT s.key, sum(s.value::int)::bigint AS n
            FROM jobs j JOIN results r ON r.job_id = j.job_id,
                 jsonb_each_text(r.severity_breakdown) AS s
            WHERE {where} AND r.severity_breakdown IS NOT NULL GROUP BY s.key""",
        *args,
    )
    # Every configured breakdown field of every job type: job type → field → value → count.
    counted = await conn.fetch(
        f"""SELECT j.job_type, f.key AS field, v.key AS value, sum(v.value::int)::bigint AS n
            FROM jobs j JOIN results r ON r.job_id = j.job_id,
                 jsonb_each(r.breakdown) AS f, jsonb_each_text(f.value) AS v
            WHERE {where} AND r.breakdown IS NOT NULL AND j.job_type IS NOT NULL
            GROUP BY 1, 2, 3""",
        *args,
    )
    breakdown: dict[str, dict[str, dict[str, int]]] = {}
    for r in counted:
        breakdown.setdefault(r["job_type"], {}).setdefault(r["field"], {})[r["value"]] = int(r["n"])
    errors = await conn.fetch(
        f"""SELECT coalesce(j.error_type, 'unknown') AS reason, count(*) AS n
            FROM jobs j WHERE {where} AND j.status = 'failed' GROUP BY 1""",
        *args,
    )
    return Analytics(
        since=q.since,
        until=q.until,
        group_by=list(q.group_by),
        totals=_row(totals, ()),
        rows=[_row(r, q.group_by) for r in rows],
        severity_breakdown={r["key"]: int(r["n"]) for r in severity},
        breakdown=breakdown,
        errors_by_reason={r["reason"]: int(r["n"]) for r in errors},
    )
