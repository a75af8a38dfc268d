"""The gateway's HTTP handlers: submit, cancel, job types, forwarded reads, live streams.

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

from services.gateway.dashboard import dashboard_routes, security_headers
from services.gateway.idempotency import Remembered, short_digest
from services.gateway.limits import PerMinute, StreamSlots, StreamsRefused
from services.gateway.metrics import GatewayMetrics
from services.gateway.middlewares import (
    PARSER_LIMITS,
    Refused,
    bounds_middleware,
    metrics_middleware,
    problems_middleware,
)
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
        # Submissions publishing now: each may turn into one background task if it fails.
        self._publishing = 0
        self.cancel_limit = PerMinute(settings.gateway_cancels_per_minute)
        self.streams = StreamSlots(
            capacity=settings.gateway_sse_max_streams,
            per_user=settings.gateway_sse_max_streams_per_user,
            wait_s=settings.gateway_sse_wait_s,
        )
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
        self, job_id: str, entry: JobEntry | Remembered, trace_id: str, *, replayed: bool
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

    @property
    def background_tasks(self) -> int:
        return len(self._tasks)

    @property
    def background_full(self) -> bool:
        """Whether one more failed submission could exceed the bound of background tasks."""
        return len(self._tasks) + self._publishing >= self.settings.gateway_max_background_publishes

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
            await request.read(),
            max_prompt_chars=self.settings.gateway_max_prompt_chars,
            max_depth=self.settings.gateway_max_json_depth,
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
        known = self.view.job(job_id) or self.view.remembered(job_id)
        if known is not None:
            same = (
                known.fingerprint == digest
                if isinstance(known, JobEntry)
                else known.digest == short_digest(digest)
            )
            if not same:
                self.metrics.rejected.labels("idempotency-key-reused").inc()
                return problem(
                    409,
                    "idempotency-key-reused",
                    "Idempotency-Key reused",
                    "this Idempotency-Key was used for a different body",
                    job_id=job_id,
                )
            self.metrics.replayed.inc()
            return self._accepted_answer(job_id, known, trace_id, replayed=True)
        if self.view.keys.full:
            # Remembering no more keys must not mean forgetting old ones: refuse new ones.
            self.metrics.rejected.labels("idempotency-memory-full").inc()
            return problem(
                503,
                "idempotency-memory-full",
                "Idempotency-Keys unavailable",
                "the gateway holds as many Idempotency-Keys as it may; submit without one"
                " or try again later",
                headers={"Retry-After": str(self.view.keys.retry_after_s(time.time()))},
            )
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
        if self.background_full:
            # Kafka has been failing: every failed submission leaves a void to retry. Past
            # the bound, refuse before publishing rather than grow the set without end.
            self.metrics.background_full.inc()
            self.metrics.rejected.labels("background-full").inc()
            return problem(
                503,
                "kafka-unavailable",
                "Job queue unavailable",
                "the gateway is still repairing earlier failed submissions; try again",
                headers={"Retry-After": "5"},
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
        self._publishing += 1
        try:
            accepted_error, run_error = await self._publish_pair(
                (events_topic(self.prefix), accepted), (job_topic(sub.priority, self.prefix), run)
            )
        finally:
            # No await from here to `spawn`: a failure's task replaces its count at once.
            self._publishing -= 1
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
        wait = self.cancel_limit.take(who.user_id, time.monotonic())
        if wait is not None:
            self.metrics.rate_limited.labels("cancels-per-minute").inc()
            return problem(
                429,
                "rate-limit-cancels-per-minute",
                "Too many requests",
                f"at most {self.cancel_limit.allowed} cancels per minute per user",
                headers={"Retry-After": str(wait)},
                limit="cancels-per-minute",
                allowed=self.cancel_limit.allowed,
            )
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
            answer = await self.results.forward(
                request.method, request.rel_url.raw_path_qs, request.headers
            )
        except Unreachable as exc:
            self.metrics.forward_failures.inc()
            log.warning("results service unreachable: %s", exc)
            return self._results_unavailable()
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Proxy the notifier's SSE stream of one job, chunk by chunk."""
        who = self.principal(request, SCOPE_READ)
        assert self.sse is not None
        try:
            async with self.streams.hold(who.user_id):
                return await self.sse.stream(request)
        except StreamsRefused as refused:
            self.metrics.sse_refused.labels(refused.reason).inc()
            if refused.reason == StreamSlots.PER_USER:
                return problem(
                    429,
                    "too-many-streams",
                    "Too many live streams",
                    f"at most {self.streams.per_user} live streams per user; close one",
                    headers={"Retry-After": str(refused.retry_after_s)},
                )
            return problem(
                503,
                "streams-busy",
                "Live streams busy",
                "no live stream slot came free in time; try again",
                headers={"Retry-After": str(refused.retry_after_s)},
            )
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


def build_app(
    api: Api,
    registry: CollectorRegistry,
    *,
    ready: ReadyCheck,
    info: InfoCheck,
) -> web.Application:
    app = web.Application(
        middlewares=[
            metrics_middleware(api.metrics),
            problems_middleware,
            bounds_middleware(api.settings.gateway_max_target_bytes),
        ],
        client_max_size=api.settings.gateway_max_body_bytes,
        handler_args=PARSER_LIMITS,
    )
    document = json.dumps(
        build_document(
            sse=api.sse is not None,
            max_prompt_chars=api.settings.gateway_max_prompt_chars,
            max_json_depth=api.settings.gateway_max_json_depth,
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
        api.metrics.background_publishes.set(api.background_tasks)
        api.metrics.sse_streams.set(api.streams.open)
        api.metrics.idempotency_keys.set(len(api.view.keys))
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
    for path, handler in dashboard_routes(api.ws_url or "").items():
        r.add_get(path, handler, allow_head=False)
    app.on_response_prepare.append(security_headers)
    return app
