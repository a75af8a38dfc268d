"""The results service's Prometheus metrics, declared once per service instance registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class ResultsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events_persisted = Counter(
            "streamjobs_results_events_persisted_total",
            "Lifecycle events applied and stored, by type",
            ("type",),
            registry=registry,
        )
        self.events_ignored = Counter(
            "streamjobs_results_events_ignored_total",
            "New lifecycle events the state machine refused (illegal or out-of-date moves)",
            registry=registry,
        )
        self.chunks_persisted = Counter(
            "streamjobs_results_chunks_persisted_total",
            "New chunk rows stored",
            registry=registry,
        )
        self.poison_records = Counter(
            "streamjobs_results_poison_records_total",
            "Records skipped because they could not be read, by topic",
            ("topic",),
            registry=registry,
        )
        self.records_rejected = Counter(
            "streamjobs_results_records_rejected_total",
            "Records the database refused or whose rows could not be built, isolated from their"
            " batch and sent to the DLQ topic with their reason, by topic",
            ("topic",),
            registry=registry,
        )
        self.persister_restarts = Counter(
            "streamjobs_results_persister_restarts_total",
            "Persister loops restarted after an unexpected error, rewound to the committed offsets",
            registry=registry,
        )
        self.owner_changes_refused = Counter(
            "streamjobs_results_owner_changes_refused_total",
            "Later job.accepted facts naming another owner than the job's first one, not applied",
            registry=registry,
        )
        self.tokens = Counter(
            "streamjobs_results_tokens_total",
            "Tokens of completed jobs as the LLM reported them, by model and kind",
            ("model", "kind"),
            registry=registry,
        )
        self.cost = Counter(
            "streamjobs_results_cost_usd_total",
            "Estimated cost of completed jobs from the workload file's prices, by model",
            ("model",),
            registry=registry,
        )
        self.unpriced = Counter(
            "streamjobs_results_unpriced_total",
            "Results stored with a null cost: their model has no price in the workload file,"
            " by model (the first 20 names, then other)",
            ("model",),
            registry=registry,
        )
        self.batch_size = Histogram(
            "streamjobs_results_batch_records",
            "Records per written batch",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.write_latency = Histogram(
            "streamjobs_results_db_write_seconds",
            "Time of one successful batch transaction",
            buckets=_WRITE_BUCKETS,
            registry=registry,
        )
        self.write_retries = Counter(
            "streamjobs_results_db_write_retries_total",
            "Batch transactions tried again after a failure",
            registry=registry,
        )
        self.write_failures = Counter(
            "streamjobs_results_db_write_failures_total",
            "Batch writes that failed, by kind (connection: retried; database, record: bisected)",
            ("kind",),
            registry=registry,
        )
        self.commit_failures = Counter(
            "streamjobs_results_offset_commit_failures_total",
            "Offset commits refused (rebalance); the records come again and are deduplicated",
            registry=registry,
        )
        self.lag_records = Gauge(
            "streamjobs_results_consumer_lag_records",
            "Records on the broker not yet written, per topic",
            ("topic",),
            registry=registry,
        )
        self.lag_seconds = Histogram(
            "streamjobs_results_persist_lag_seconds",
            "From the oldest record of a batch reaching Kafka to the batch's commit",
            buckets=_LAG_BUCKETS,
            registry=registry,
        )
        self.retention_cleared = Counter(
            "streamjobs_results_retention_jobs_cleared_total",
            "Jobs whose prompt and response the retention sweep removed",
            registry=registry,
        )
        self.http_requests = Counter(
            "streamjobs_results_http_requests_total",
            "Read API requests by route and status",
            ("route", "status"),
            registry=registry,
        )
        self.http_latency = Histogram(
            "streamjobs_results_http_request_seconds",
            "Read API latency by route",
            ("route",),
            buckets=_WRITE_BUCKETS,
            registry=registry,
        )
        self.webhooks_planned = Counter(
            "streamjobs_webhooks_planned_total",
            "Final events of jobs naming a webhook, put on the webhooks topic (replays count)",
            registry=registry,
        )
        self.webhook_deliveries = Counter(
            "streamjobs_webhook_deliveries_total",
            "Webhook deliveries ended, by outcome: delivered, failed (for good), duplicate"
            " (a replayed record already done), unreadable",
            ("outcome",),
            registry=registry,
        )
        self.webhook_attempts = Counter(
            "streamjobs_webhook_attempts_total",
            "Webhook POSTs tried, by result: 2xx, 4xx, 5xx, error (no answer), refused (address)",
            ("result",),
            registry=registry,
        )
        self.webhook_attempt_seconds = Histogram(
            "streamjobs_webhook_attempt_seconds",
            "Time a webhook POST took, answer or not",
            buckets=_LAG_BUCKETS,
            registry=registry,
        )
        self.webhook_oldest_pending = Gauge(
            "streamjobs_webhook_oldest_pending_seconds",
            "Age (since its first try) of the oldest webhook delivery this instance holds",
            registry=registry,
        )
