"""The gateway's HTTP handlers and middlewares: submit, cancel, job types, forwarded reads.

`build_app` wires them into an aiohttp application; the Kafka side (producer, events
reader) is passed in as plain callables, so a unit test runs the handlers with fakes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any
from urllib.parse import quote

from aiohttp import web
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from services.gateway.dashboard import dashboard_handler
from services.gateway.metrics import GatewayMetrics
from services.gateway.openapi import build_document
from services.gateway.proxy import ResultsClient, SseClient, Unreachable
from services.gateway.settings import GatewaySettings
from services.gateway.submit import (
    Rejection,
    build_records,
    check_idempotency_key,
    parse_submission,
    trace_id_from_traceparent,
)
from services.gateway.view import EventsView, JobEntry, fingerprint, idempotent_job_id
from shared.api import (
    API_PREFIX,
    HEADER_IDEMPOTENCY_KEY,
    CancelAccepted,
    JobAcceptedView,
    JobLinks,
    JobSubmission,
    JobTypeView,
)
from shared.auth import SCOPE_READ, SCOPE_WRITE, InvalidToken, Principal
from shared.contracts import (
    CancelJob,
    CancelJobData,
    Envelope,
    JobFailed,
    JobFailedData,
    new_trace_id,
    utcnow,
)
from shared.http import problem
from shared.jobtypes import JOB_TYPES
from shared.kafka import traceparent
from shared.lifecycle import JobStatus
from shared.retry import retry_until_done
from shared.topics import HEADER_TRACEPARENT, control_topic, events_topic, job_topic
from shared.verifier import TokenVerifier

log = logging.getLogger(__name__)

Publish = Callable[[str, Envelope], Awaitable[None]]
ReadyCheck = Callable[[], Awaitable[dict[str, bool]]]
InfoCheck = Callable[[], Awaitable[dict[str, bool]]]

JSON = "application/json"
PUBLISH_ERRORS = (KafkaError, TimeoutError, OSError)


class Refused(Exception):
    """A request refused before any work: carries the problem response to answer."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _rejection(r: Rejection) -> web.Response:
    extra: dict[str, Any] = {"errors": r.errors} if r.errors else {}
    return problem(r.status, r.kind, r.title, r.detail, **extra)


def _json(model: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=model.model_dump_json().encode(), status=status, content_type=JSON, headers=headers
    )


class Api:
    def __init__(
        self,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
        view: EventsView,
        publish: Publish,
        results: ResultsClient,
        *,
        verifier: TokenVerifier,
        sse: SseClient | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.view = view
        self.publish = publish
        self.results = results
        self.sse = sse
        self.prefix = settings.topic_prefix
        self.verifier = verifier
        self.base = settings.gateway_public_url.rstrip("/")
        self.ws_url = settings.gateway_public_ws_url or None
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.job_types_body = json.dumps(
            [
                JobTypeView(
                    name=t.name,
                    description=t.description,
                    structured=getattr(t, "output_schema", None) is not None,
                ).model_dump(mode="json")
                for t in JOB_TYPES.values()
            ]
        ).encode()

    # -- helpers -------------------------------------------------------------------------

    def principal(self, request: web.Request, scope: str) -> Principal:
        try:
            who = self.verifier.from_header(request.headers.get("Authorization"))
        except InvalidToken as exc:
            raise Refused(
                problem(
                    401,
                    "unauthorized",
                    "Unauthorized",
                    str(exc),
                    headers={"WWW-Authenticate": 'Bearer realm="streamjobs"'},
                )
            ) from None
        if not who.can(scope):
            raise Refused(problem(403, "forbidden", "Forbidden", f"the token lacks scope {scope}"))
        return who

    def links(self, job_id: str) -> JobLinks:
        job = f"{self.base}{API_PREFIX}/jobs/{quote(job_id, safe='')}"
        return JobLinks(
            self=job,
            stream=f"{job}/stream",
            result=f"{job}/result",
            cancel=f"{job}/cancel",
            websocket=self.ws_url,
        )

    def _accepted_answer(
        self, job_id: str, entry: JobEntry, trace_id: str, *, replayed: bool
    ) -> web.Response:
        links = self.links(job_id)
        body = JobAcceptedView(
            job_id=job_id,
            status=entry.status,
            job_type=entry.job_type,
            priority=entry.priority,
            submitted_at=entry.submitted_at,
            links=links,
        )
        headers = {
            "Location": links.self,
            HEADER_TRACEPARENT: traceparent(trace_id).decode(),
        }
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        return _json(body, 202, headers)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the background publishes to end; cancel those still trying after that."""
        if self._tasks:
            _, late = await asyncio.wait(
                set(self._tasks), timeout=self.settings.gateway_publish_timeout_s
            )
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    # -- POST /api/v1/jobs ---------------------------------------------------------------

    async def submit(self, request: web.Request) -> web.Response:
        who = self.principal(request, SCOPE_WRITE)
        parsed = parse_submission(
            await request.read(), max_prompt_chars=self.settings.gateway_max_prompt_chars
        )
        if isinstance(parsed, Rejection):
            self.metrics.rejected.labels(parsed.kind).inc()
            return _rejection(parsed)
        trace_id = trace_id_from_traceparent(request.headers.get(HEADER_TRACEPARENT))
        trace_id = trace_id or new_trace_id()
        digest = fingerprint(
            parsed.prompt,
            parsed.job_type,
            parsed.priority.value,
            parsed.config.model_dump(),
            parsed.metadata,
        )
        key = request.headers.get(HEADER_IDEMPOTENCY_KEY)
        if key is None:
            return await self._accept(who, parsed, str(uuid.uuid4()), digest, trace_id)
        bad_key = check_idempotency_key(key)
        if bad_key is not None:
            self.metrics.rejected.labels(bad_key.kind).inc()
            return _rejection(bad_key)
        job_id = idempotent_job_id(who.user_id, key)
        # One publish per key in this instance: a second request waits for the first.
        while (pending := self._pending.get(job_id)) is not None:
            await asyncio.wait([pending])
        entry = self.view.job(job_id)
        if entry is not None:
            if entry.fingerprint != digest:
                self.metrics.rejected.labels("idempotency-key-reused").inc()
                return problem(
                    409,
                    "idempotency-key-reused",
                    "Idempotency-Key reused",
                    "this Idempotency-Key was used for a different body",
                    job_id=job_id,
                )
            self.metrics.replayed.inc()
            return self._accepted_answer(job_id, entry, trace_id, replayed=True)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[job_id] = done
        try:
            return await self._accept(who, parsed, job_id, digest, trace_id)
        finally:
            del self._pending[job_id]
            done.set_result(None)

    async def _accept(
        self, who: Principal, sub: JobSubmission, job_id: str, digest: bytes, trace_id: str
    ) -> web.Response:
        submitted_at = utcnow()
        at = submitted_at.timestamp()
        limited = self.view.check(who.user_id, at)
        if limited is not None:
            self.metrics.rate_limited.labels(limited.limit.value).inc()
            self.metrics.rejected.labels("rate-limited").inc()
            return problem(
                429,
                f"rate-limit-{limited.limit.value}",
                "Too many requests",
                f"at most {limited.allowed} {limited.limit.value.replace('-', ' ')} per user",
                headers={"Retry-After": str(limited.retry_after_s)},
                limit=limited.limit.value,
                allowed=limited.allowed,
            )
        accepted, run = build_records(
            sub, user_id=who.user_id, job_id=job_id, trace_id=trace_id, submitted_at=submitted_at
        )
        # Counted at once, before the first await: concurrent requests see each other.
        self.view.accepted(
            job_id,
            owner=who.user_id,
            job_type=sub.job_type,
            priority=sub.priority,
            submitted_at=submitted_at,
            digest=digest,
            at=at,
        )
        started = time.perf_counter()
        accepted_error, run_error = await self._publish_pair(
            (events_topic(self.prefix), accepted), (job_topic(sub.priority, self.prefix), run)
        )
        if run_error is not None:
            self.view.withdraw(job_id, at)
            self.metrics.publish_failures.inc()
            log.warning(
                "job %s not queued: %s: %s",
                job_id,
                type(run_error).__name__,
                run_error,
                extra={"job_id": job_id, "trace_id": trace_id},
            )
            # The records may still reach the broker later (an unacknowledged send is not
            # a lost one): the job is voided, so a 503 never turns into a job that runs.
            self.spawn(self._void(job_id, trace_id, who.user_id))
            return problem(
                503,
                "kafka-unavailable",
                "Job queue unavailable",
                "the job was not queued; try again",
                headers={"Retry-After": "1"},
            )
        if accepted_error is not None:
            # Queued, but the fact is missing: the read side must still learn of the job.
            self.metrics.publish_failures.inc()
            self.spawn(self._republish(accepted))
        self.metrics.publish_latency.observe(time.perf_counter() - started)
        self.metrics.submitted.labels(sub.job_type, sub.priority.value).inc()
        log.info(
            "job queued (%s, %s)",
            sub.job_type,
            sub.priority.value,
            extra={"job_id": job_id, "trace_id": trace_id},
        )
        entry = self.view.job(job_id)
        assert entry is not None
        return self._accepted_answer(job_id, entry, trace_id, replayed=False)

    async def _publish_pair(
        self, first: tuple[str, Envelope], second: tuple[str, Envelope]
    ) -> tuple[BaseException | None, BaseException | None]:
        """Publish two records at once; the error of each, or None where it was acknowledged.

        Both are handed to the producer together, first one first, so they leave in one
        produce request: one broker round trip per submission instead of two, and the
        accepted fact is appended before the command a streamer acts on.
        """
        try:
            async with asyncio.timeout(self.settings.gateway_publish_timeout_s):
                outcomes = await asyncio.gather(
                    self.publish(*first), self.publish(*second), return_exceptions=True
                )
        except TimeoutError as exc:
            return exc, exc
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, PUBLISH_ERRORS):
                raise outcome
        return outcomes[0], outcomes[1]

    async def _republish(self, record: Envelope) -> None:
        """Publish a job's accepted fact until the broker has it (the event id dedupes)."""
        await self._publish_until_taken(events_topic(self.prefix), record)

    async def _void(self, job_id: str, trace_id: str, owner: str) -> None:
        """Void a job whose command was not acknowledged: cancel it and close it as failed.

        Tried until the broker takes both or `drain` gives up at shutdown.
        """
        reason = "not queued: the job command was not acknowledged"
        cancel = CancelJob(
            job_id=job_id,
            trace_id=trace_id,
            data=CancelJobData(user_id=owner, admin=True, reason=reason),
        )
        closed = JobFailed(
            job_id=job_id,
            trace_id=trace_id,
            data=JobFailedData(
                attempt=0, reason=reason, error_type="PublishFailed", retriable=True
            ),
        )
        for topic, record in (
            (control_topic(self.prefix), cancel),
            (events_topic(self.prefix), closed),
        ):
            await self._publish_until_taken(topic, record)

    async def _publish_until_taken(self, topic: str, record: Envelope) -> None:
        async def once() -> None:
            async with asyncio.timeout(self.settings.gateway_publish_timeout_s):
                await self.publish(topic, record)

        await retry_until_done(
            once,
            PUBLISH_ERRORS,
            what=f"publishing {record.type}",
            log_extra={"job_id": record.job_id, "trace_id": record.trace_id},
        )

    # -- POST /api/v1/jobs/{job_id}/cancel -----------------------------------------------

    async def cancel(self, request: web.Request) -> web.Response:
        who = self.principal(request, SCOPE_WRITE)
        job_id = request.match_info["job_id"]
        status = await self._status_for(who, job_id, request)
        if status in (JobStatus.COMPLETED, JobStatus.FAILED):
            return problem(
                409,
                "job-finished",
                "Job already finished",
                f"job {job_id} is {status.value}; it cannot be cancelled",
                status_of_job=status.value,
            )
        answer = CancelAccepted(job_id=job_id, status=status)
        if status is JobStatus.CANCELLED:
            return _json(answer, 202)  # nothing left to stop: the same answer, no command
        trace_id = trace_id_from_traceparent(request.headers.get(HEADER_TRACEPARENT))
        command = CancelJob(
            job_id=job_id,
            trace_id=trace_id or new_trace_id(),
            data=CancelJobData(user_id=who.user_id, admin=who.is_admin),
        )
        try:
            async with asyncio.timeout(self.settings.gateway_publish_timeout_s):
                await self.publish(control_topic(self.prefix), command)
        except PUBLISH_ERRORS:
            self.metrics.publish_failures.inc()
            return problem(
                503,
                "kafka-unavailable",
                "Control topic unavailable",
                "the cancel was not sent; try again",
                headers={"Retry-After": "1"},
            )
        self.metrics.cancels.inc()
        return _json(answer, 202)

    async def _status_for(self, who: Principal, job_id: str, request: web.Request) -> JobStatus:
        """The job's status if `who` may act on it; 404 otherwise (never says whose it is)."""
        not_found = Refused(problem(404, "job-not-found", "Job not found", f"no job {job_id}"))
        entry = self.view.job(job_id)
        if entry is not None:
            if not who.may_see(entry.owner):
                raise not_found
            return entry.status
        # Older than the view: the read side knows, and checks the token itself.
        try:
            answer = await self.results.forward(
                "GET", f"{API_PREFIX}/jobs/{quote(job_id, safe='')}", request.headers
            )
        except Unreachable:
            self.metrics.forward_failures.inc()
            raise Refused(self._results_unavailable()) from None
        if answer.status in (403, 404):
            raise not_found
        if answer.status != 200:
            raise Refused(self._results_unavailable())
        try:
            body = json.loads(answer.body)
            owner, status = body["user_id"], JobStatus(body["status"])
        except (ValueError, KeyError, TypeError):
            raise Refused(self._results_unavailable()) from None
        if not who.may_see(owner):
            raise not_found
        return status

    def _results_unavailable(self) -> web.Response:
        return problem(
            503,
            "results-unavailable",
            "Read side unavailable",
            "the results service did not answer; submitting still works",
            headers={"Retry-After": "1"},
        )

    # -- reads ---------------------------------------------------------------------------

    async def forward(self, request: web.Request) -> web.Response:
        self.principal(request, SCOPE_READ)
        try:
            answer = await self.results.forward(request.method, request.raw_path, request.headers)
        except Unreachable as exc:
            self.metrics.forward_failures.inc()
            log.warning("results service unreachable: %s", exc)
            return self._results_unavailable()
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Proxy the notifier's SSE stream of one job, chunk by chunk."""
        self.principal(request, SCOPE_READ)
        assert self.sse is not None
        try:
            return await self.sse.stream(request)
        except Unreachable:
            return problem(
                503,
                "notifier-unavailable",
                "Live stream unavailable",
                "the notifier did not answer",
                headers={"Retry-After": "1"},
            )

    async def job_types(self, _: web.Request) -> web.Response:
        return web.Response(body=self.job_types_body, content_type=JSON)


# -- middlewares -------------------------------------------------------------------------

_HTTP_KINDS = {
    400: "bad-request",
    404: "not-found",
    405: "method-not-allowed",
    413: "body-too-large",
}


@web.middleware
async def problems_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error leaves as problem JSON; an unexpected one says nothing of the internals."""
    try:
        return await handler(request)
    except Refused as refused:
        return refused.response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return problem(
            exc.status, _HTTP_KINDS.get(exc.status, "http-error"), exc.reason, headers=headers
        )
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return problem(500, "internal", "Internal Server Error")


def metrics_middleware(metrics: GatewayMetrics) -> Any:
    @web.middleware
    async def measure(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        started = time.perf_counter()
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            metrics.requests.labels(request.method, route, str(status)).inc()
            metrics.latency.labels(request.method, route).observe(time.perf_counter() - started)

    return measure


def build_app(
    api: Api,
    registry: CollectorRegistry,
    *,
    ready: ReadyCheck,
    info: InfoCheck,
) -> web.Application:
    app = web.Application(
        middlewares=[metrics_middleware(api.metrics), problems_middleware],
        client_max_size=api.settings.gateway_max_body_bytes,
    )
    document = json.dumps(
        build_document(
            sse=api.sse is not None, max_prompt_chars=api.settings.gateway_max_prompt_chars
        )
    ).encode()

    async def openapi(_: web.Request) -> web.Response:
        return web.Response(body=document, content_type=JSON)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        # Readiness is about submitting; the read side's state is reported, not required.
        checks, informational = await ready(), await info()
        ok = all(checks.values())
        return web.json_response(
            {"status": "ready" if ok else "not ready", "checks": checks, "info": informational},
            status=200 if ok else 503,
        )

    async def metrics(_: web.Request) -> web.Response:
        api.metrics.view_jobs.set(api.view.jobs)
        api.metrics.view_users.set(api.view.users)
        resp = web.Response(body=generate_latest(registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    jobs = f"{API_PREFIX}/jobs"
    r = app.router
    r.add_post(jobs, api.submit)
    r.add_get(jobs, api.forward, allow_head=False)
    r.add_get(f"{jobs}/{{job_id}}", api.forward, allow_head=False)
    r.add_get(f"{jobs}/{{job_id}}/stream", api.forward, allow_head=False)
    r.add_get(f"{jobs}/{{job_id}}/result", api.forward, allow_head=False)
    r.add_post(f"{jobs}/{{job_id}}/cancel", api.cancel)
    if api.sse is not None:
        r.add_get(f"{jobs}/{{job_id}}/events", api.events, allow_head=False)
    r.add_get(f"{API_PREFIX}/analytics", api.forward, allow_head=False)
    r.add_get(f"{API_PREFIX}/job-types", api.job_types, allow_head=False)
    r.add_get(f"{API_PREFIX}/openapi.json", openapi, allow_head=False)
    r.add_get("/healthz", healthz, allow_head=False)
    r.add_get("/readyz", readyz, allow_head=False)
    r.add_get("/metrics", metrics, allow_head=False)
    r.add_get("/dashboard", dashboard_handler(api.ws_url or ""), allow_head=False)
    return app
