"""The read API (aiohttp): authentication, query parameters, problem JSON, request metrics.

Every input is untrusted: a token, cursor, date or limit that cannot be read answers
a 4xx problem, never a 500; strings are cleaned (shared.text) as the stored ones were,
so a NUL in a query matches what was stored instead of breaking the query.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
from aiohttp import web
from pydantic import BaseModel

from services.results import reads
from services.results.analytics import BUCKETS, GROUP_KEYS, AnalyticsQuery, analytics
from services.results.metrics import ResultsMetrics
from shared.api import API_PREFIX
from shared.auth import SCOPE_READ, InvalidToken, Principal
from shared.http import problem
from shared.lifecycle import JobStatus
from shared.text import clean_text
from shared.topics import Priority
from shared.verifier import TokenVerifier

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PRINCIPAL = web.RequestKey("principal", Principal)
# Moments PostgreSQL and datetime arithmetic (a day either side) both handle.
EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
LATEST = datetime(9999, 12, 30, tzinfo=UTC)
MAX_LIMIT = 200


class BadParameter(Exception):
    def __init__(self, name: str, detail: str) -> None:
        super().__init__(detail)
        self.name = name
        self.detail = detail


def _principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def _json(model: BaseModel) -> web.Response:
    return web.Response(text=model.model_dump_json(), content_type="application/json")


def _text(request: web.Request, name: str) -> str | None:
    raw = request.query.get(name)
    return clean_text(raw) if raw else None


def _moment(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        moment = datetime.fromisoformat(raw.replace(" ", "+"))  # a '+' arrives as a space
        moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
        in_range = EARLIEST <= moment <= LATEST
    except (ValueError, OverflowError):
        raise BadParameter(name, f"{name} must be an ISO 8601 date-time") from None
    if not in_range:
        raise BadParameter(name, f"{name} must lie between years 1 and 9999")
    return moment


def _choice(request: web.Request, name: str, allowed: tuple[str, ...]) -> str | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if raw not in allowed:
        raise BadParameter(name, f"{name} must be one of {', '.join(allowed)}")
    return raw


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "50")
    rule = f"limit must be an integer from 1 to {MAX_LIMIT}"
    if len(raw) > 12:
        raise BadParameter("limit", rule)  # before int(): a huge number is costly to read
    try:
        limit = int(raw)
    except ValueError:
        raise BadParameter("limit", rule) from None
    if not 1 <= limit <= MAX_LIMIT:
        raise BadParameter("limit", rule)
    return limit


def _job_id(request: web.Request) -> str:
    return clean_text(request.match_info["job_id"])


def _not_found(job_id: str) -> web.Response:
    return problem(404, "job-not-found", "Job not found", f"no job {job_id} visible to you")


class ReadApi:
    def __init__(
        self,
        pool: asyncpg.Pool,
        verifier: TokenVerifier,
        metrics: ResultsMetrics,
        *,
        max_page_bytes: int,
    ) -> None:
        self.pool = pool
        self.verifier = verifier
        self.metrics = metrics
        self.max_page_bytes = max_page_bytes

    def install(self, app: web.Application) -> None:
        app.middlewares.append(self._middleware)
        p = API_PREFIX
        app.router.add_get(f"{p}/jobs", self.list_jobs)
        app.router.add_get(f"{p}/jobs/{{job_id}}", self.get_job)
        app.router.add_get(f"{p}/jobs/{{job_id}}/stream", self.stream)
        app.router.add_get(f"{p}/jobs/{{job_id}}/result", self.result)
        app.router.add_get(f"{p}/analytics", self.analytics)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        response = await self._handle(request, handler, route)
        self.metrics.http_requests.labels(route, str(response.status)).inc()
        self.metrics.http_latency.labels(route).observe(time.perf_counter() - started)
        return response

    async def _handle(
        self, request: web.Request, handler: Handler, route: str
    ) -> web.StreamResponse:
        try:
            if route.startswith(API_PREFIX):
                # The verifier raises only InvalidToken, whatever the header holds.
                principal = self.verifier.from_header(request.headers.get("Authorization"))
                if not principal.can(SCOPE_READ):
                    return problem(
                        403, "forbidden", "Forbidden", f"reading jobs needs the {SCOPE_READ} scope"
                    )
                request[PRINCIPAL] = principal
            return await handler(request)
        except InvalidToken as exc:
            return problem(
                401,
                "unauthorized",
                "Unauthorized",
                str(exc),
                headers={"WWW-Authenticate": "Bearer"},
            )
        except BadParameter as exc:
            return problem(
                400, "invalid-parameter", "Invalid query parameter", exc.detail, parameter=exc.name
            )
        except reads.BadCursor as exc:
            return problem(400, "invalid-cursor", "Invalid cursor", str(exc), parameter="cursor")
        except web.HTTPException as exc:
            if exc.status == 404:
                return problem(404, "not-found", "Not found", f"no route {request.path}")
            if exc.status == 405:
                return problem(405, "method-not-allowed", "Method not allowed")
            raise
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, TimeoutError):
            log.warning("read %s failed: database unavailable", request.path)
            return problem(
                503,
                "database-unavailable",
                "Database unavailable",
                "try again shortly",
                headers={"Retry-After": "1"},
            )
        except Exception:  # the HTTP boundary: a bug answers 500, never a stack trace
            log.exception("read %s failed", request.path)
            return problem(500, "internal-error", "Internal error")

    async def get_job(self, request: web.Request) -> web.Response:
        job_id = _job_id(request)
        async with self.pool.acquire() as conn:
            view = await reads.get_job(conn, _principal(request), job_id)
        return _not_found(job_id) if view is None else _json(view)

    async def stream(self, request: web.Request) -> web.Response:
        job_id = _job_id(request)
        async with self.pool.acquire() as conn:
            snapshot = await reads.stream_snapshot(conn, _principal(request), job_id)
        return _not_found(job_id) if snapshot is None else _json(snapshot)

    async def result(self, request: web.Request) -> web.Response:
        job_id = _job_id(request)
        try:
            async with self.pool.acquire() as conn:
                result = await reads.get_result(conn, _principal(request), job_id)
        except reads.NotFinished as exc:
            return problem(
                409,
                "not-finished",
                "Job not finished",
                f"the job is {exc.status.value}; its result exists once it is final",
                status_now=exc.status.value,
            )
        return _not_found(job_id) if result is None else _json(result)

    async def list_jobs(self, request: web.Request) -> web.Response:
        principal = _principal(request)
        user_id = _text(request, "user_id")
        if user_id is not None and not principal.is_admin and user_id != principal.user_id:
            return problem(403, "forbidden", "Forbidden", "only admins list other users' jobs")
        status = _choice(request, "status", tuple(s.value for s in JobStatus))
        priority = _choice(request, "priority", tuple(p.value for p in Priority))
        since, until = _moment(request, "since"), _moment(request, "until")
        flt = reads.ListFilter(
            status=JobStatus(status) if status else None,
            job_type=_text(request, "job_type"),
            priority=Priority(priority) if priority else None,
            since=since,
            until=until,
            user_id=user_id,
            limit=_limit(request),
            cursor=request.query.get("cursor") or None,
        )
        async with self.pool.acquire() as conn:
            page = await reads.list_jobs(conn, principal, flt, max_bytes=self.max_page_bytes)
        return _json(page)

    async def analytics(self, request: web.Request) -> web.Response:
        until = _moment(request, "until") or datetime.now(UTC)
        since = _moment(request, "since") or until - timedelta(days=1)
        if since >= until:
            raise BadParameter("since", "since must be before until")
        keys: list[str] = []
        for key in filter(None, request.query.get("group_by", "").split(",")):
            key = key.strip()
            if key not in GROUP_KEYS:
                raise BadParameter("group_by", f"group_by keys are {', '.join(GROUP_KEYS)}")
            if key not in keys:
                keys.append(key)
        bucket = _choice(request, "bucket", BUCKETS) or "hour"
        query = AnalyticsQuery(since=since, until=until, group_by=tuple(keys), bucket=bucket)
        async with self.pool.acquire() as conn:
            answer = await analytics(conn, _principal(request), query)
        return _json(answer)
