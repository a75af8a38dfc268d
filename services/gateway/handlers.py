"""The gateway's route handlers: each parses a request, calls its use case and renders the
answer. Submitting reads on in admission.py, cancelling in cancel.py."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web
from pydantic import ValidationError

from services.gateway.admission import Admission, Admitted
from services.gateway.admission_records import JSON_OPTIONS
from services.gateway.cancel import Cancels
from services.gateway.limits import StreamSlots, StreamsRefused
from services.gateway.metrics import GatewayMetrics
from services.gateway.models import ModelCatalogue
from services.gateway.notifiers import NotifierRoutes
from services.gateway.proxy import ResultsClient, SseClient, Unreachable
from services.gateway.publisher import PUBLISH_ERRORS, Publisher
from services.gateway.rejection import RESULTS_UNAVAILABLE, Rejection, retry_later
from services.gateway.repair import Repairs
from services.gateway.retry import Retries
from services.gateway.settings import GatewaySettings
from services.gateway.submit import (
    Submission,
    check_idempotency_key,
    check_webhook,
    invalid_errors,
    parse_request,
    trace_id_from_traceparent,
)
from services.gateway.view import EventsView
from shared.api import (
    API_PREFIX,
    HEADER_IDEMPOTENCY_KEY,
    JobTypeView,
    WebhookDefault,
    WebhookSecret,
)
from shared.auth import SCOPE_READ, SCOPE_WRITE, InvalidToken, Principal
from shared.contracts import new_trace_id, utcnow
from shared.http import Refused, problem
from shared.jobtypes import load_job_types
from shared.kafka import traceparent
from shared.topics import HEADER_TRACEPARENT
from shared.upstreams import load as load_registry
from shared.verifier import TokenVerifier
from shared.webhook_defaults import Send, WebhookDefaults, publish_default
from shared.webhooks import AllowList, signing_key, user_secret

log = logging.getLogger(__name__)

JSON = "application/json"


def _json(model: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=model.model_dump_json().encode(), status=status, content_type=JSON, headers=headers
    )


class Gateway:
    """The handlers, over the use cases and adapters the composition root hands in."""

    def __init__(
        self,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
        view: EventsView,
        *,
        publisher: Publisher,
        repairs: Repairs,
        admission: Admission,
        cancels: Cancels,
        results: ResultsClient,
        retries: Retries,
        streams: StreamSlots,
        verifier: TokenVerifier,
        sse: SseClient | None = None,
        webhook_defaults: WebhookDefaults | None = None,
        send_default: Send | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.view = view
        self.publisher = publisher
        self.repairs = repairs
        self.admission = admission
        self.cancels = cancels
        self.results = results
        self.retries = retries
        self.streams = streams
        self.verifier = verifier
        self.sse = sse
        self.webhook_defaults = webhook_defaults or WebhookDefaults()
        self.send_default = send_default
        self.webhook_allow = AllowList.parse(settings.webhook_allow)
        self.webhook_key = signing_key(
            settings.webhook_signing_key, settings.streamjobs_auth_secret
        )
        self.base = settings.gateway_public_url.rstrip("/")
        self.notifiers = NotifierRoutes(settings.notifier_ws_urls, settings.notifier_sse_urls)
        self.known_types = load_job_types(settings.streamjobs_workloads_file)
        self.models = ModelCatalogue(load_registry(settings.streamjobs_workloads_file))
        self.job_types_body = json.dumps(
            [
                JobTypeView(
                    name=t.name,
                    description=t.description,
                    structured=t.structured,
                    output_schema=t.output_schema,
                    breakdown=t.breakdown_fields,
                ).model_dump(mode="json")
                for t in self.known_types.values()
            ]
        ).encode()

    @property
    def background_tasks(self) -> int:
        return self.repairs.count

    async def drain(self) -> None:
        await self.repairs.drain()

    def refresh_gauges(self) -> None:
        """The gauges read at scrape time rather than kept up to date on every change."""
        self.metrics.view_jobs.set(self.view.jobs)
        self.metrics.view_users.set(self.view.users)
        self.metrics.background_publishes.set(self.repairs.count)
        self.metrics.sse_streams.set(self.streams.open)
        self.metrics.idempotency_keys.set(len(self.view.keys))

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

    def links(self, job_id: str) -> dict[str, str | None]:
        """A job's `JobLinks`, as their JSON object."""
        job = f"{self.base}{API_PREFIX}/jobs/{quote(job_id, safe='')}"
        return {
            "self": job,
            "stream": f"{job}/stream",
            "result": f"{job}/result",
            "cancel": f"{job}/cancel",
            "websocket": self.notifiers.ws_url(job_id),
        }

    # -- POST /api/v1/jobs ---------------------------------------------------------------

    async def submit(self, request: web.Request) -> web.Response:
        who = self.principal(request, SCOPE_WRITE)
        outcome = await self.admit(who, await request.read(), request.headers)
        if isinstance(outcome, Rejection):
            return outcome.response()
        parsed, admitted = outcome
        return self._accepted(admitted, parsed.trace_id)

    async def admit(
        self, who: Principal, raw: bytes, headers: Mapping[str, str]
    ) -> tuple[Submission, Admitted] | Rejection:
        """The one admission path of a submission body (also under `/v1/chat/completions`):
        validated, its model routed, then admitted by the user's decider."""
        parsed = parse_request(
            raw,
            headers,
            max_prompt_chars=self.settings.gateway_max_prompt_chars,
            max_depth=self.settings.gateway_max_json_depth,
            job_types=self.known_types,
            max_messages=self.settings.gateway_max_messages,
        )
        if isinstance(parsed, Rejection):
            self.metrics.rejected.labels(parsed.kind).inc()
            return parsed
        unrouted = self.models.refuse(parsed.job.config.model)
        if unrouted is not None:
            self.metrics.rejected.labels(unrouted.kind).inc()
            return unrouted
        job = parsed.job
        if job.webhook_url is not None:
            refused = await check_webhook(job.webhook_url, self.webhook_allow)
            if refused is not None:
                self.metrics.rejected.labels(refused.kind).inc()
                return refused
        elif (default := self.webhook_defaults.get(who.user_id)) is not None:
            # Checked when it was set; the deliverer checks the address again.
            job = job.model_copy(update={"webhook_url": default})
        outcome = await self.admission.submit(who, job, parsed.key, parsed.trace_id)
        if isinstance(outcome, Rejection):
            return outcome
        return parsed, outcome

    def _accepted(self, admitted: Admitted, trace_id: str) -> web.Response:
        entry, links = admitted.entry, self.links(admitted.job_id)
        location = str(links["self"])
        # A `JobAcceptedView` of values the gateway built itself: encoded by orjson as the
        # model would write it, with no model built on the way.
        body = {
            "job_id": admitted.job_id,
            "status": entry.status,
            "job_type": entry.job_type,
            "priority": entry.priority,
            "submitted_at": entry.submitted_at,
            "links": links,
        }
        headers = {"Location": location, HEADER_TRACEPARENT: traceparent(trace_id).decode()}
        if admitted.replayed:
            headers["Idempotent-Replayed"] = "true"
        return web.Response(
            body=orjson.dumps(body, option=JSON_OPTIONS),
            status=202,
            content_type=JSON,
            headers=headers,
        )

    # -- POST /api/v1/jobs/{job_id}/cancel -----------------------------------------------

    async def cancel(self, request: web.Request) -> web.Response:
        who = self.principal(request, SCOPE_WRITE)
        trace_id = trace_id_from_traceparent(request.headers.get(HEADER_TRACEPARENT))
        outcome = await self.cancels.cancel(
            who, request.match_info["job_id"], trace_id, request.headers
        )
        if isinstance(outcome, Rejection):
            return outcome.response()
        return _json(outcome, 202)

    # -- POST /api/v1/jobs/{job_id}/retry ------------------------------------------------

    async def retry(self, request: web.Request) -> web.Response:
        who = self.principal(request, SCOPE_WRITE)
        trace_id = (
            trace_id_from_traceparent(request.headers.get(HEADER_TRACEPARENT)) or new_trace_id()
        )
        key = request.headers.get(HEADER_IDEMPOTENCY_KEY)
        if key is not None and (bad_key := check_idempotency_key(key)) is not None:
            return bad_key.response()
        prepared = await self.retries.prepare(who, request.match_info["job_id"], request.headers)
        if isinstance(prepared, Rejection):
            return prepared.response()
        unrouted = self.models.refuse(prepared.submission.config.model)
        if unrouted is not None:
            self.metrics.rejected.labels(unrouted.kind).inc()
            return unrouted.response()
        outcome = await self.admission.submit(
            prepared.owner, prepared.submission, key, trace_id, retry_of=prepared.job_id
        )
        if isinstance(outcome, Rejection):
            return outcome.response()
        if not outcome.replayed:
            self.metrics.retries.inc()
            log.info(
                "job %s retried as %s",
                prepared.job_id,
                outcome.job_id,
                extra={"job_id": outcome.job_id, "trace_id": trace_id},
            )
        return self._accepted(outcome, trace_id)

    # -- reads, forwarded to the results service -----------------------------------------

    async def forward(self, request: web.Request) -> web.Response:
        self.principal(request, SCOPE_READ)
        try:
            answer = await self.results.forward(
                request.method, request.rel_url.raw_path_qs, request.headers
            )
        except Unreachable as exc:
            self.metrics.forward_failures.inc()
            log.warning("results service unreachable: %s", exc)
            return RESULTS_UNAVAILABLE.response()
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    # -- GET /api/v1/jobs/{job_id}/events: the notifier's live stream, proxied -----------

    async def events(self, request: web.Request) -> web.StreamResponse:
        who = self.principal(request, SCOPE_READ)
        assert self.sse is not None
        try:
            async with self.streams.hold(who.user_id):
                base = self.notifiers.sse_base(request.match_info["job_id"])
                return await self.sse.stream(request, base)
        except StreamsRefused as refused:
            return self.streams_refused(refused).response()
        except Unreachable:
            return retry_later(
                "notifier-unavailable", "Live stream unavailable", "the notifier did not answer", 1
            ).response()

    def streams_refused(self, refused: StreamsRefused) -> Rejection:
        """No live stream slot for the caller: 429 at the per-user bound, else 503."""
        self.metrics.sse_refused.labels(refused.reason).inc()
        if refused.reason == StreamSlots.PER_USER:
            return Rejection(
                429,
                "too-many-streams",
                "Too many live streams",
                f"at most {self.streams.per_user} live streams per user; close one",
                headers={"Retry-After": str(refused.retry_after_s)},
            )
        return retry_later(
            "streams-busy",
            "Live streams busy",
            "no live stream slot came free in time; try again",
            refused.retry_after_s,
        )

    # -- GET /api/v1/webhook/secret ------------------------------------------------------

    async def webhook_secret(self, request: web.Request) -> web.Response:
        who = self.principal(request, SCOPE_READ)
        secret = user_secret(self.webhook_key, who.user_id)
        return _json(WebhookSecret(user_id=who.user_id, secret=secret))

    # -- GET / PUT /api/v1/webhook: the caller's default webhook URL ---------------------

    async def get_webhook_default(self, request: web.Request) -> web.Response:
        who = self.principal(request, SCOPE_READ)
        return _json(WebhookDefault(url=self.webhook_defaults.get(who.user_id)))

    async def put_webhook_default(self, request: web.Request) -> web.Response:
        who = self.principal(request, SCOPE_WRITE)
        try:
            body = WebhookDefault.model_validate_json(await request.read())
        except ValidationError as exc:
            return Rejection(
                422,
                "invalid-webhook",
                "Invalid webhook",
                "the body does not validate",
                invalid_errors(exc),
            ).response()
        if body.url is not None:
            refused = await check_webhook(body.url, self.webhook_allow)
            if refused is not None:
                return refused.response()
        if self.send_default is None:  # a gateway built without Kafka (tests of its routes)
            return retry_later(
                "kafka-unavailable", "Not saved", "no producer for webhook defaults", 1
            ).response()
        try:
            async with asyncio.timeout(self.settings.gateway_publish_timeout_s):
                await publish_default(
                    self.send_default, self.settings.topic_prefix, who.user_id, body.url, utcnow()
                )
        except PUBLISH_ERRORS:
            return retry_later(
                "kafka-unavailable", "Not saved", "the default could not be stored; try again", 1
            ).response()
        # This instance knows at once; the others within the follower's poll.
        self.webhook_defaults.apply(who.user_id, body.url)
        return _json(body)

    async def job_types(self, _: web.Request) -> web.Response:
        return web.Response(body=self.job_types_body, content_type=JSON)

    async def list_models(self, _: web.Request) -> web.Response:
        return web.Response(body=self.models.body, content_type=JSON)
