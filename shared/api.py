"""The public REST API's bodies: what the gateway accepts and what the read side answers.

The gateway validates submissions with these models and builds its OpenAPI
document from them; the results service serialises its answers with them, so
the document stays true to what is served. Fields are only ever added.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.contracts import (
    CHAT_OPTION_FIELDS,
    ChatMessage,
    ChatOptions,
    JobSpec,
    ModelConfig,
    TokenUsage,
    ToolCall,
)
from shared.lifecycle import JobStatus
from shared.topics import Priority
from shared.webhooks import MAX_URL_CHARS, WebhookRefused, parse_url

API_PREFIX = "/api/v1"
HEADER_IDEMPOTENCY_KEY = "Idempotency-Key"


def _checked_url(value: str | None) -> str | None:
    """A webhook URL as `shared.webhooks` accepts it; its address is checked at submit."""
    if value is not None:
        try:
            parse_url(value)
        except WebhookRefused as exc:
            raise ValueError(exc.reason) from None
    return value


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class RequestConfig(ChatOptions, ModelConfig):
    """What the LLM is asked to do: every chat completions field that shapes the answer.

    Fields left out are not sent upstream (the server's defaults apply), except `model`,
    `max_tokens` and `temperature`, which have ours.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    def record_parts(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """`config` as schema 1's `ModelConfig` holds it, and the fields set beyond it, as a
        job record carries them (`options`, empty when none is set)."""
        values = self.model_dump(exclude_none=True)
        config = {name: values.get(name) for name in ModelConfig.model_fields}
        return config, {name: values[name] for name in CHAT_OPTION_FIELDS if name in values}


class JobSubmission(BaseModel):
    """Body of `POST /api/v1/jobs`: exactly one of `prompt` and `messages`.

    A job type's system prompt is put first in a messages job only when the messages carry
    no system or developer message of their own.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str | None = Field(
        default=None, min_length=1, description="the user message; size bound is a setting"
    )
    messages: list[ChatMessage] | None = Field(
        default=None,
        min_length=1,
        description="an OpenAI chat conversation, sent as given; the prompt's size bound"
        " applies to all its text, and the number of messages is bounded by a setting",
    )
    job_type: str = Field(default="analysis", description="a name from `GET /api/v1/job-types`")
    priority: Priority = Priority.NORMAL
    config: RequestConfig = Field(default_factory=RequestConfig)
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="free JSON object, stored and returned as given"
    )
    on_interrupt: Literal["restart", "continue"] | None = Field(
        default=None,
        description="an attempt cut after streaming text: restart the answer, or continue it"
        " from the text so far; absent: the model's default (GET /api/v1/models), then restart",
    )

    webhook_url: str | None = Field(
        default=None,
        max_length=MAX_URL_CHARS,
        description="http(s) URL the job's final event is POSTed to, signed per Standard"
        " Webhooks (secret: GET /api/v1/webhook/secret); private and loopback addresses are"
        " refused unless the deployment allows them",
    )

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> JobSubmission:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` and `messages`")
        return self

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        return _checked_url(value)


class JobLinks(_Out):
    self: str
    stream: str
    result: str
    cancel: str
    websocket: str | None = None


class JobAcceptedView(_Out):
    """Answer of `POST /api/v1/jobs` (202)."""

    job_id: str
    status: JobStatus = JobStatus.QUEUED
    job_type: str
    priority: Priority
    submitted_at: datetime
    links: JobLinks


class Progress(_Out):
    tokens: int = Field(description="completion tokens streamed so far (current attempt)")
    max_tokens: int
    ratio: float = Field(ge=0, le=1)


class JobView(_Out):
    """Answer of `GET /api/v1/jobs/{id}` and one item of `GET /api/v1/jobs`."""

    job_id: str
    user_id: str
    status: JobStatus
    job_type: str
    priority: Priority
    attempt: int = 0
    model: str | None = None
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    first_token_at: datetime | None = None
    finished_at: datetime | None = None
    queue_position: int | None = Field(
        default=None, description="queued jobs of the same band ahead of this one, while queued"
    )
    waited_ms: float | None = Field(
        default=None, description="time in the queue so far (queued) or in all (started)"
    )
    progress: Progress | None = None
    error: str | None = Field(default=None, description="reason of the failure or cancellation")
    metadata: dict[str, Any] = Field(default_factory=dict)
    prompt: str | None = Field(
        default=None, description="a prompt job's prompt; `GET /api/v1/jobs/{id}` only"
    )
    messages: list[dict[str, Any]] | None = Field(
        default=None,
        description="a messages job's messages, as submitted (fields left out stay out);"
        " `GET /api/v1/jobs/{id}` only",
    )
    config: dict[str, Any] | None = Field(
        default=None, description="the request fields as submitted; `GET /api/v1/jobs/{id}` only"
    )
    retry_of: str | None = Field(
        default=None, description="the failed or cancelled job this one runs again, if any"
    )
    retried_by: list[str] | None = Field(
        default=None,
        description="the jobs that retried this one, oldest first; `GET /api/v1/jobs/{id}` only",
    )


class JobPage(_Out):
    """Answer of `GET /api/v1/jobs`: newest first; pass `next_cursor` as `cursor` for more."""

    items: list[JobView]
    next_cursor: str | None = None


class StreamSnapshot(_Out):
    """Answer of `GET /api/v1/jobs/{id}/stream`: the text of the current attempt so far."""

    job_id: str
    status: JobStatus
    attempt: int
    last_seq: int = Field(description="-1 before the first chunk")
    text: str
    tokens: int


class AttemptView(_Out):
    """One attempt of a job: where it ran, how it ended, what it used (each is billed)."""

    attempt: int
    upstream: str | None = Field(default=None, description="the upstream of the workload file")
    model: str | None = Field(default=None, description="the model asked (or reported)")
    continues: int | None = Field(
        default=None, description="the attempt whose cut-short answer this one continued"
    )
    status: str = Field(
        description="running, completed, failed, cancelled, or preempted (stopped for an urgent"
        " job; the next attempt runs the job on)"
    )
    usage: TokenUsage | None = None
    usage_estimated: bool = False
    cost_usd: float | None = Field(
        default=None, description="its usage at its model's price on its upstream; null: unpriced"
    )
    reason: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None


class JobResult(_Out):
    """Answer of `GET /api/v1/jobs/{id}/result`, once the job reached a final state."""

    job_id: str
    status: JobStatus
    job_type: str
    priority: Priority
    attempt: int
    model: str | None = None
    response: str | None = None
    parsed_response: Any = Field(
        default=None, description="the response parsed by its job type's schema, where it has one"
    )
    finish_reason: str | None = None
    usage: TokenUsage = Field(default_factory=TokenUsage)
    usage_estimated: bool = Field(
        default=False,
        description="true when usage was counted from the streamed chunks, not reported by the"
        " upstream (a failed or cancelled attempt's partial result)",
    )
    estimated_cost_usd: float | None = Field(
        default=0.0,
        description="from the workload file's prices; null when the model has no price there",
    )
    processing_time_ms: float | None = None
    time_to_first_token_ms: float | None = None
    tokens_per_second: float | None = None
    queue_wait_ms: float | None = None
    chunks: int | None = None
    severity_breakdown: dict[str, int] | None = Field(
        default=None, description="security_analysis: findings per severity"
    )
    breakdown: dict[str, dict[str, int]] | None = Field(
        default=None,
        description="per breakdown field of the job type (GET /api/v1/job-types): count per value",
    )
    error: str | None = None
    completed_at: datetime | None = None
    attempts: list[AttemptView] = Field(
        default_factory=list, description="every attempt, in order: upstream, model, usage"
    )
    billed_usage: TokenUsage | None = Field(
        default=None,
        description="the usage of every attempt summed: what the job cost across fallbacks,"
        " retries and continuations",
    )
    billed_cost_usd: float | None = Field(
        default=None,
        description="the cost of every priced attempt summed; null when no attempt is priced",
    )
    parse_error: str | None = Field(
        default=None,
        description="structured job types: why the response could not be parsed, if it could not",
    )
    tool_calls: list[ToolCall] | None = Field(
        default=None, description="the tool calls the model made (arguments as JSON text)"
    )
    messages: list[dict[str, Any]] | None = Field(
        default=None,
        description="a messages job's messages, as submitted (fields left out stay out)",
    )


class JobTypeView(_Out):
    name: str
    description: str
    structured: bool = Field(description="whether results carry a parsed_response")
    output_schema: dict[str, Any] | None = Field(
        default=None, description="the strict JSON schema a structured type's answer follows"
    )
    breakdown: list[str] = Field(
        default_factory=list, description="fields of the answer analytics counts per value"
    )


class ModelView(_Out):
    """One model of the workload file, as `GET /api/v1/models` lists it (no URLs, no keys)."""

    name: str = Field(description='a model name; "*" is the catch-all for any other name')
    upstreams: list[str] = Field(description="its upstreams' names, in the file's order")
    fallback: str | None = Field(default=None, description="tried when every upstream failed")
    on_interrupt: Literal["restart", "continue"] = Field(
        description="what follows an attempt cut after streaming text, unless the job says"
    )
    priced: bool = Field(description="whether a price is configured (else its cost is null)")


class Percentiles(_Out):
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None


class AnalyticsRow(_Out):
    """Figures of one group (the `group_by` keys present are set, the others null)."""

    bucket: datetime | None = None
    model: str | None = None
    job_type: str | None = None
    priority: Priority | None = None
    user_id: str | None = None
    jobs: int
    by_status: dict[str, int]
    success_rate: float | None = None
    error_rate: float | None = None
    queue_wait_ms: Percentiles
    time_to_first_token_ms: Percentiles
    duration_ms: Percentiles
    tokens_per_second: Percentiles
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float = Field(description="the sum over priced results; unpriced ones are skipped")
    unpriced_results: int = Field(
        default=0, description="results whose model has no price: their cost is not in cost_usd"
    )


class Analytics(_Out):
    """Answer of `GET /api/v1/analytics`."""

    since: datetime
    until: datetime
    group_by: list[str]
    totals: AnalyticsRow
    rows: list[AnalyticsRow]
    severity_breakdown: dict[str, int] = Field(default_factory=dict)
    breakdown: dict[str, dict[str, dict[str, int]]] = Field(
        default_factory=dict,
        description="job type → breakdown field → value → count, over the parsed results",
    )
    errors_by_reason: dict[str, int] = Field(default_factory=dict)


class JobInputs(_Out):
    """What the read side answers the gateway about a job to retry (not a public route): its
    owner, its status and the spec it was accepted with; `spec` is null once retention
    forgot the job's prompt."""

    job_id: str
    user_id: str
    status: JobStatus
    spec: JobSpec | None = None


class CancelAccepted(_Out):
    """Answer of `POST /api/v1/jobs/{id}/cancel` (202): the cancel is on its way to the job."""

    job_id: str
    status: JobStatus = Field(description="the job's status as the gateway knew it when asked")


class AnalyticsSeries(_Out):
    """Answer of `GET /api/v1/analytics/series`: one value per step of every series.

    Point `i` covers `[t[i], t[i] + step_s)`; rates are per second over that step, queue
    depth is counted at the step's end, percentiles are over the jobs of that step (null
    where there were none).
    """

    since: datetime
    until: datetime
    step_s: int
    t: list[int] = Field(description="each step's start, epoch seconds (aligned to step_s)")
    jobs_per_second: dict[str, list[float]] = Field(
        description="submitted, and each final status by its finishing time"
    )
    tokens_per_second: list[float] = Field(description="completion tokens of results stored")
    queue_depth: dict[str, list[int]] = Field(description="priority band → jobs waiting")
    queue_wait_p95_ms: list[float | None] = Field(description="over jobs started in the step")
    ttft_p95_ms: list[float | None] = Field(description="over results stored in the step")


class InstanceView(_Out):
    """One streamer as its last heartbeat told (`GET /api/v1/instances`)."""

    instance_id: str
    host: str
    pid: int
    state: Literal["up", "gone"] = Field(
        description="gone: no heartbeat for several of its periods"
    )
    slots_total: int
    slots_in_use: int
    jobs_running: int
    jobs_waiting: int
    partitions: list[str]
    loop_lag_ms: float
    overloaded: bool
    started_at: datetime
    last_seen: datetime
    interval_s: float


class InstanceList(_Out):
    """Answer of `GET /api/v1/instances`: streamers, those up first."""

    items: list[InstanceView]


class WebhookAttempt(_Out):
    attempt: int
    attempted_at: datetime
    status_code: int | None = Field(description="the receiver's answer; null: none came")
    error: str | None = None
    duration_ms: float
    next_attempt_at: datetime | None = Field(description="null: no further try")


class WebhookDeliveryView(_Out):
    webhook_id: str = Field(description="the `webhook-id` header, the same on every try")
    url: str
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    first_attempt_at: datetime | None
    next_attempt_at: datetime | None
    last_error: str | None
    attempt_log: list[WebhookAttempt]


class JobWebhooks(_Out):
    """Answer of `GET /api/v1/jobs/{id}/webhooks`: the job's deliveries and every try."""

    job_id: str
    deliveries: list[WebhookDeliveryView]


class WebhookSecret(_Out):
    """Answer of `GET /api/v1/webhook/secret`: the caller's signing secret."""

    user_id: str
    secret: str = Field(description="whsec_<base64>: verify deliveries with it")


class WebhookDefault(BaseModel):
    """Body and answer of `PUT /api/v1/webhook`, answer of `GET`: the caller's default
    webhook URL, used by each job submitted without a `webhook_url`; null: none."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = Field(max_length=MAX_URL_CHARS)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return _checked_url(value)
