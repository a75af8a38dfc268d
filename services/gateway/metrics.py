"""The gateway's Prometheus metrics, declared once per service instance registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "streamjobs_gateway_http_requests_total",
            "HTTP requests by method, route template and status",
            ("method", "route", "status"),
            registry=registry,
        )
        self.latency = Histogram(
            "streamjobs_gateway_http_request_duration_seconds",
            "HTTP request latency by method and route template",
            ("method", "route"),
            buckets=_HTTP_BUCKETS,
            registry=registry,
        )
        self.submitted = Counter(
            "streamjobs_gateway_jobs_submitted_total",
            "Jobs accepted and published",
            ("job_type", "priority"),
            registry=registry,
        )
        self.replayed = Counter(
            "streamjobs_gateway_idempotent_replays_total",
            "Submissions answered with an existing job for their Idempotency-Key",
            registry=registry,
        )
        self.rejected = Counter(
            "streamjobs_gateway_submissions_rejected_total",
            "Submissions refused, by reason",
            ("reason",),
            registry=registry,
        )
        self.rate_limited = Counter(
            "streamjobs_gateway_rate_limited_total",
            "Submissions and cancels refused by a rate limit",
            ("limit",),
            registry=registry,
        )
        self.publish_latency = Histogram(
            "streamjobs_gateway_publish_duration_seconds",
            "From sending a submission's admission request to its decision read back",
            buckets=_HTTP_BUCKETS,
            registry=registry,
        )
        self.publish_failures = Counter(
            "streamjobs_gateway_publish_failures_total",
            "Submissions or cancels not published because Kafka failed",
            registry=registry,
        )
        self.retries = Counter(
            "streamjobs_gateway_retries_accepted_total",
            "Retries of failed or cancelled jobs accepted as new jobs (replays not counted)",
            registry=registry,
        )
        self.cancels = Counter(
            "streamjobs_gateway_cancels_published_total",
            "CancelJob commands published",
            registry=registry,
        )
        self.forward_failures = Counter(
            "streamjobs_gateway_forward_failures_total",
            "Reads not forwarded because the results service did not answer",
            registry=registry,
        )
        self.view_jobs = Gauge(
            "streamjobs_gateway_view_jobs", "Jobs held in the events view", registry=registry
        )
        self.view_users = Gauge(
            "streamjobs_gateway_view_users", "Users held in the events view", registry=registry
        )
        self.background_publishes = Gauge(
            "streamjobs_gateway_background_publishes",
            "Voids of late admissions being retried in the background (bounded)",
            registry=registry,
        )
        self.background_full = Counter(
            "streamjobs_gateway_background_full_total",
            "Submissions refused with 503 because the background voids reached their bound",
            registry=registry,
        )
        self.sse_streams = Gauge(
            "streamjobs_gateway_sse_streams",
            "Proxied SSE streams open now",
            registry=registry,
        )
        self.sse_refused = Counter(
            "streamjobs_gateway_sse_refused_total",
            "SSE streams refused: per-user (the user's cap) or busy (no free slot in time)",
            ("reason",),
            registry=registry,
        )
        self.idempotency_keys = Gauge(
            "streamjobs_gateway_idempotency_keys",
            "Idempotency-Keys held within their window (bounded; full means new keys get 503)",
            registry=registry,
        )
        self.admission_decisions = Counter(
            "streamjobs_gateway_admission_decisions_total",
            "Admission requests decided by this instance as their partition's owner",
            ("outcome",),
            registry=registry,
        )
        self.admission_latency = Histogram(
            "streamjobs_gateway_admission_decision_seconds",
            "From a submission (requester's clock) to its decision committed by the owner",
            buckets=_HTTP_BUCKETS,
            registry=registry,
        )
        self.admission_late_voids = Counter(
            "streamjobs_gateway_admission_late_voids_total",
            "Jobs accepted after their requester had answered 503, cancelled by the requester",
            registry=registry,
        )
        self.admission_transaction_requests = Histogram(
            "streamjobs_gateway_admission_transaction_requests",
            "Admission requests decided in one owner transaction (a group commit)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=registry,
        )
        self.admission_partitions = Gauge(
            "streamjobs_gateway_admission_partitions",
            "Admission partitions this instance owns and decides for",
            registry=registry,
        )
