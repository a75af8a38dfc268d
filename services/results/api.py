"""The read API (aiohttp): its route table, authentication, query parameters, problem JSON,
request metrics.

Every input is untrusted: a token, cursor, date or limit that cannot be read answers
a 4xx problem, never a 500; the query rules are the models of shared/queries.py.
"""

from __future__ import annotations

import logging

import asyncpg
from aiohttp import web
from pydantic import BaseModel

from services.results import reads, webhook_store
from services.results.analytics import AnalyticsQuery, analytics
from services.results.instances import InstancesReader
from services.results.metrics import ResultsMetrics
from services.results.series import series
from shared.api import API_PREFIX, JobWebhooks
from shared.auth import SCOPE_READ, InvalidToken, Principal
from shared.http import Handler, Route, add_routes, errors_middleware, metrics_middleware, problem
from shared.queries import AnalyticsQuery as AnalyticsParams
from shared.queries import BadQuery, JobListQuery, SeriesQuery, parse_query
from shared.text import clean_text
from shared.verifier import TokenVerifier

log = logging.getLogger(__name__)

PRINCIPAL = web.RequestKey("principal", Principal)


def _principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def _json(model: BaseModel) -> web.Response:
    return web.Response(text=model.model_dump_json(), content_type="application/json")


def _job_id(request: web.Request) -> str:
    return clean_text(request.match_info["job_id"])


def _not_found(job_id: str) -> web.Response:
    return problem(404, "job-not-found", "Job not found", f"no job {job_id} visible to you")


def _error(request: web.Request, exc: Exception) -> web.Response | None:
    """The problem answer of an expected failure of a read."""
    if isinstance(exc, InvalidToken):
        return problem(
            401, "unauthorized", "Unauthorized", str(exc), headers={"WWW-Authenticate": "Bearer"}
        )
    if isinstance(exc, BadQuery):
        return problem(
            400, "invalid-parameter", "Invalid query parameter", exc.detail, parameter=exc.name
        )
    if isinstance(exc, reads.BadCursor):
        return problem(400, "invalid-cursor", "Invalid cursor", str(exc), parameter="cursor")
    if isinstance(exc, web.HTTPException):
        if exc.status == 404:
            return problem(404, "not-found", "Not found", f"no route {request.path}")
        if exc.status == 405:
            return problem(405, "method-not-allowed", "Method not allowed")
        return None
    if isinstance(
        exc, (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, TimeoutError)
    ):
        log.warning("read %s failed: database unavailable", request.path)
        return problem(
            503,
            "database-unavailable",
            "Database unavailable",
            "try again shortly",
            headers={"Retry-After": "1"},
        )
    return None


class ReadApi:
    def __init__(
        self,
        pool: asyncpg.Pool,
        verifier: TokenVerifier,
        metrics: ResultsMetrics,
        *,
        max_page_bytes: int,
        instances: InstancesReader | None = None,
    ) -> None:
        self.pool = pool
        self.instances = instances
        self.verifier = verifier
        self.metrics = metrics
        self.max_page_bytes = max_page_bytes

    def install(self, app: web.Application) -> None:
        app.middlewares.extend(
            [
                metrics_middleware(self._observe),
                errors_middleware(
                    _error, internal_kind="internal-error", internal_title="Internal error"
                ),
                self._authenticate,
            ]
        )
        add_routes(app, ROUTES, self, head=True)

    def _observe(self, _: web.Request, route: str, status: int, seconds: float) -> None:
        self.metrics.http_requests.labels(route, str(status)).inc()
        self.metrics.http_latency.labels(route).observe(seconds)

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        if resource is not None and resource.canonical.startswith(API_PREFIX):
            # The verifier raises only InvalidToken, whatever the header holds.
            principal = self.verifier.from_header(request.headers.get("Authorization"))
            if not principal.can(SCOPE_READ):
                return problem(
                    403, "forbidden", "Forbidden", f"reading jobs needs the {SCOPE_READ} scope"
                )
            request[PRINCIPAL] = principal
        return await handler(request)

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

    async def inputs(self, request: web.Request) -> web.Response:
        """The gateway's read of a job it is asked to retry: not forwarded from outside."""
        job_id = _job_id(request)
        async with self.pool.acquire() as conn:
            inputs = await reads.job_inputs(conn, _principal(request), job_id)
        return _not_found(job_id) if inputs is None else _json(inputs)

    async def list_jobs(self, request: web.Request) -> web.Response:
        principal = _principal(request)
        raw_user = request.query.get("user_id")
        user_id = clean_text(raw_user) if raw_user else None
        if user_id is not None and not principal.is_admin and user_id != principal.user_id:
            return problem(403, "forbidden", "Forbidden", "only admins list other users' jobs")
        q = parse_query(JobListQuery, request.query)
        flt = reads.ListFilter(
            status=q.status,
            job_type=q.job_type,
            priority=q.priority,
            since=q.since,
            until=q.until,
            user_id=q.user_id,
            limit=q.limit,
            cursor=q.cursor,
        )
        async with self.pool.acquire() as conn:
            page = await reads.list_jobs(conn, principal, flt, max_bytes=self.max_page_bytes)
        return _json(page)

    async def webhooks(self, request: web.Request) -> web.Response:
        job_id = _job_id(request)
        async with self.pool.acquire() as conn:
            if await reads.get_job(conn, _principal(request), job_id) is None:
                return _not_found(job_id)
            deliveries = await webhook_store.deliveries_of(conn, job_id)
        return _json(JobWebhooks.model_validate({"job_id": job_id, "deliveries": deliveries}))

    async def analytics(self, request: web.Request) -> web.Response:
        q = parse_query(AnalyticsParams, request.query)
        query = AnalyticsQuery(since=q.since, until=q.until, group_by=q.group_by, bucket=q.bucket)
        async with self.pool.acquire() as conn:
            answer = await analytics(conn, _principal(request), query)
        return _json(answer)

    async def series(self, request: web.Request) -> web.Response:
        q = parse_query(SeriesQuery, request.query)
        async with self.pool.acquire() as conn:
            answer = await series(conn, _principal(request), q.since, q.until, q.step)
        return _json(answer)

    async def list_instances(self, request: web.Request) -> web.Response:
        if not _principal(request).is_admin:
            return problem(403, "forbidden", "Forbidden", "only admins see the streamer instances")
        if self.instances is None:
            return problem(503, "instances-unavailable", "Instances unavailable", "not followed")
        return _json(self.instances.view())


P = API_PREFIX
ROUTES: tuple[Route[ReadApi], ...] = (
    Route("GET", f"{P}/jobs", ReadApi.list_jobs, query=JobListQuery),
    Route("GET", f"{P}/jobs/{{job_id}}", ReadApi.get_job),
    Route("GET", f"{P}/jobs/{{job_id}}/stream", ReadApi.stream),
    Route("GET", f"{P}/jobs/{{job_id}}/result", ReadApi.result),
    Route("GET", f"{P}/jobs/{{job_id}}/inputs", ReadApi.inputs),
    Route("GET", f"{P}/jobs/{{job_id}}/webhooks", ReadApi.webhooks),
    Route("GET", f"{P}/analytics", ReadApi.analytics, query=AnalyticsParams),
    Route("GET", f"{P}/analytics/series", ReadApi.series, query=SeriesQuery),
    Route("GET", f"{P}/instances", ReadApi.list_instances),
)
