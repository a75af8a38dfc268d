"""The gateway's route table: every route declared once, with what its OpenAPI operation
says. `build_app` registers the table; `build_document` describes the same table."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from services.gateway import openapi
from services.gateway.apidocs import DOCS_ROUTES, ApiDocs
from services.gateway.dashboard import DASHBOARD_ROUTES, Dashboard, security_headers
from services.gateway.handlers import Gateway
from services.gateway.middlewares import (
    PARSER_LIMITS,
    bounds_middleware,
    gateway_metrics_middleware,
    problems_middleware,
)
from services.gateway.openai_compat import OpenAICompat
from services.gateway.openai_errors import openai_errors_middleware
from services.gateway.openai_models import (
    COMPLETION_HEADERS,
    COMPLETION_REPLY,
    OPENAI_ERROR_REPLIES,
    ChatCompletionRequest,
    CompletionQuery,
    OpenAIError,
    OpenAIModel,
    OpenAIModelList,
)
from services.gateway.submit import KEY_PATTERN
from shared.api import (
    API_PREFIX,
    HEADER_IDEMPOTENCY_KEY,
    Analytics,
    AnalyticsSeries,
    CancelAccepted,
    InstanceList,
    JobAcceptedView,
    JobPage,
    JobResult,
    JobSubmission,
    JobTypeView,
    JobView,
    JobWebhooks,
    ModelView,
    StreamSnapshot,
    WebhookDefault,
    WebhookSecret,
)
from shared.http import OPS_ROUTES, Ops, ReadyCheck, Reply, Route, add_routes
from shared.queries import AnalyticsQuery, JobListQuery, SeriesQuery

JOBS = f"{API_PREFIX}/jobs"
JOB = f"{JOBS}/{{job_id}}"
_READS = (400, 401, 403, 404, 414, 503)
_LISTS = (400, 401, 403, 414, 422, 503)

_SUBMIT_HEADERS = (
    {
        "name": HEADER_IDEMPOTENCY_KEY,
        "in": "header",
        "required": False,
        "description": "the same key and body give the same job, on any instance",
        "schema": {"type": "string", "pattern": KEY_PATTERN},
    },
    {
        "name": "traceparent",
        "in": "header",
        "required": False,
        "description": "W3C trace context; its trace id follows the job",
        "schema": {"type": "string"},
    },
)

_RETRY_HEADERS = (
    {
        **_SUBMIT_HEADERS[0],
        "description": "the same key gives the same new job, however often the retry is sent",
    },
    _SUBMIT_HEADERS[1],
)

API_ROUTES: tuple[Route[Gateway], ...] = (
    Route(
        "POST",
        JOBS,
        Gateway.submit,
        "submitJob",
        "Submit a job: it is queued on its priority band's topic",
        body=JobSubmission,
        headers=_SUBMIT_HEADERS,
        replies=(Reply(202, "Accepted: the job is queued", JobAcceptedView),),
        problems=(400, 401, 403, 409, 413, 414, 422, 429, 503),
    ),
    Route(
        "GET",
        JOBS,
        Gateway.forward,
        "listJobs",
        "The caller's jobs, newest first (an admin sees everyone's)",
        query=JobListQuery,
        replies=(Reply(200, "A page of jobs", JobPage),),
        problems=_LISTS,
    ),
    Route(
        "GET",
        JOB,
        Gateway.forward,
        "getJob",
        "A job's status, attempt, queue position and progress",
        replies=(Reply(200, "The job", JobView),),
        problems=_READS,
    ),
    Route(
        "GET",
        f"{JOB}/stream",
        Gateway.forward,
        "getJobStream",
        "The text of the current attempt so far and its last chunk seq",
        replies=(Reply(200, "The text so far", StreamSnapshot),),
        problems=_READS,
    ),
    Route(
        "GET",
        f"{JOB}/result",
        Gateway.forward,
        "getJobResult",
        "The final result: response, usage, cost and timings",
        replies=(Reply(200, "The result", JobResult),),
        problems=(400, 401, 403, 404, 409, 414, 503),
    ),
    Route(
        "POST",
        f"{JOB}/cancel",
        Gateway.cancel,
        "cancelJob",
        "Cancel a queued or running job (idempotent)",
        replies=(Reply(202, "The cancel is on its way", CancelAccepted),),
        problems=(400, 401, 403, 404, 409, 414, 429, 503),
    ),
    Route(
        "POST",
        f"{JOB}/retry",
        Gateway.retry,
        "retryJob",
        "Run a failed or cancelled job again, as a new job with the same inputs",
        headers=_RETRY_HEADERS,
        replies=(Reply(202, "Accepted: the new job is queued", JobAcceptedView),),
        problems=(400, 401, 403, 404, 409, 413, 414, 422, 429, 503),
    ),
    Route(
        "GET",
        f"{JOB}/webhooks",
        Gateway.forward,
        "getJobWebhooks",
        "The job's webhook deliveries and every try: time, status code or error, next try",
        replies=(Reply(200, "The deliveries", JobWebhooks),),
        problems=_READS,
    ),
    Route(
        "GET",
        f"{API_PREFIX}/webhook",
        Gateway.get_webhook_default,
        "getWebhookDefault",
        "The caller's default webhook URL (null: none)",
        replies=(Reply(200, "The default", WebhookDefault),),
        problems=(401, 403),
    ),
    Route(
        "PUT",
        f"{API_PREFIX}/webhook",
        Gateway.put_webhook_default,
        "putWebhookDefault",
        "Set (or, with url null, clear) the webhook URL of the caller's jobs submitted without one",
        body=WebhookDefault,
        replies=(Reply(200, "Stored", WebhookDefault),),
        problems=(400, 401, 403, 413, 422, 503),
    ),
    Route(
        "GET",
        f"{API_PREFIX}/webhook/secret",
        Gateway.webhook_secret,
        "getWebhookSecret",
        "The caller's webhook signing secret (whsec_…), to verify deliveries",
        replies=(Reply(200, "The secret", WebhookSecret),),
        problems=(401, 403),
    ),
    Route(
        "GET",
        f"{API_PREFIX}/analytics",
        Gateway.forward,
        "getAnalytics",
        "Counts, rates, percentiles, tokens and cost, grouped",
        query=AnalyticsQuery,
        replies=(Reply(200, "The figures", Analytics),),
        problems=_LISTS,
    ),
    Route(
        "GET",
        f"{API_PREFIX}/analytics/series",
        Gateway.forward,
        "getAnalyticsSeries",
        "Time series per step: jobs/s by status, tokens/s, queue depth per band, p95s",
        query=SeriesQuery,
        replies=(Reply(200, "One value per step of each series", AnalyticsSeries),),
        problems=_LISTS,
    ),
    Route(
        "GET",
        f"{API_PREFIX}/instances",
        Gateway.forward,
        "listInstances",
        "Admin: the streamer instances, their slots, partitions and loop lag",
        replies=(Reply(200, "Every instance heard from lately", InstanceList),),
        problems=(401, 403, 414, 503),
    ),
    Route(
        "GET",
        f"{API_PREFIX}/job-types",
        Gateway.job_types,
        "listJobTypes",
        "The job types a submission may name",
        replies=(Reply(200, "Every job type", JobTypeView, many=True),),
        secured=False,
    ),
    Route(
        "GET",
        f"{API_PREFIX}/models",
        Gateway.list_models,
        "listModels",
        "The models a submission may name: upstreams, fallback, on_interrupt, priced",
        replies=(Reply(200, "Every configured model", ModelView, many=True),),
        secured=False,
    ),
)
# Only where a notifier is configured: the live stream proxied to the caller.
EVENTS_ROUTE: Route[Gateway] = Route(
    "GET",
    f"{JOB}/events",
    Gateway.events,
    "streamJobEvents",
    "The job's chunks and lifecycle events as server-sent events",
    replies=(Reply(200, "an event stream until the job is final", media="text/event-stream"),),
    problems=(*_READS, 429),
)
# The OpenAI-compatible surface (openai_compat.py): refusals are OpenAI error objects.
OPENAI_ROUTES: tuple[Route[OpenAICompat], ...] = (
    Route(
        "POST",
        "/v1/chat/completions",
        OpenAICompat.create,
        "createChatCompletion",
        "OpenAI-compatible: the request runs as a job; its id is X-Streamjobs-Job-Id",
        body=ChatCompletionRequest,
        headers=(*_SUBMIT_HEADERS, *COMPLETION_HEADERS),
        replies=(COMPLETION_REPLY, *OPENAI_ERROR_REPLIES),
        tags=("openai",),
    ),
    Route(
        "GET",
        "/v1/chat/completions/{job_id}",
        OpenAICompat.retrieve,
        "getChatCompletion",
        "A job's answer as a chat.completion; stream=true&starting_after=<event_id> (or"
        " Last-Event-ID) resumes its stream after that chunk; include_usage=true",
        query=CompletionQuery,
        replies=(COMPLETION_REPLY, *OPENAI_ERROR_REPLIES),
        tags=("openai",),
    ),
    Route(
        "GET",
        "/v1/models",
        OpenAICompat.list_models,
        "listOpenAIModels",
        "OpenAI-compatible: the models of the workload file (not the catch-all)",
        replies=(Reply(200, "The models", OpenAIModelList),),
        secured=False,
        tags=("openai",),
    ),
    Route(
        "GET",
        "/v1/models/{model}",
        OpenAICompat.get_model,
        "getOpenAIModel",
        "OpenAI-compatible: one model, 404 when nothing routes it",
        replies=(Reply(200, "The model", OpenAIModel), Reply(404, "Unknown model", OpenAIError)),
        secured=False,
        tags=("openai",),
    ),
)
GATEWAY_OPS_ROUTES = tuple(
    replace(r, summary="Kafka answers (the read side's reachability is reported, not required)")
    if r.path == "/readyz"
    else r
    for r in OPS_ROUTES
)


def api_routes(*, sse: bool) -> tuple[Route[Gateway], ...]:
    return (*API_ROUTES, EVENTS_ROUTE) if sse else API_ROUTES


def all_routes(*, sse: bool) -> list[Route[Any]]:
    """Every route the gateway serves, as its document lists them."""
    return [
        *api_routes(sse=sse),
        *OPENAI_ROUTES,
        *DOCS_ROUTES,
        *GATEWAY_OPS_ROUTES,
        *DASHBOARD_ROUTES,
    ]


def build_document(
    *,
    sse: bool = False,
    max_prompt_chars: int | None = None,
    max_json_depth: int = 32,
    job_types: Collection[str] = (),
) -> dict[str, Any]:
    return openapi.build_document(
        all_routes(sse=sse),
        max_prompt_chars=max_prompt_chars,
        max_json_depth=max_json_depth,
        job_types=job_types,
    )


def build_app(
    gateway: Gateway, registry: CollectorRegistry, *, ready: ReadyCheck, info: ReadyCheck
) -> web.Application:
    settings = gateway.settings
    app = web.Application(
        middlewares=[
            gateway_metrics_middleware(gateway.metrics),
            openai_errors_middleware,
            problems_middleware,
            bounds_middleware(settings.gateway_max_target_bytes),
        ],
        client_max_size=settings.gateway_max_body_bytes,
        handler_args=PARSER_LIMITS,
    )
    sse = gateway.sse is not None
    document = build_document(
        sse=sse,
        max_prompt_chars=settings.gateway_max_prompt_chars,
        max_json_depth=settings.gateway_max_json_depth,
        job_types=list(gateway.known_types),
    )
    add_routes(app, api_routes(sse=sse), gateway)
    add_routes(app, OPENAI_ROUTES, OpenAICompat(gateway))
    add_routes(app, DOCS_ROUTES, ApiDocs(document))
    ops = Ops(registry, ready, info=info, before_scrape=gateway.refresh_gauges)
    add_routes(app, GATEWAY_OPS_ROUTES, ops)
    # The dashboard opens one notifier socket: the first instance (it redirects or relays).
    add_routes(app, DASHBOARD_ROUTES, Dashboard(next(iter(gateway.notifiers.ws_urls), "")))
    app.on_response_prepare.append(security_headers)
    return app
