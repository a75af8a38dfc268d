"""The notifier's Prometheus metrics, declared once per service instance registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_DELIVERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class NotifierMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.connections = Gauge(
            "streamjobs_notifier_connections",
            "Open client connections",
            ("transport",),
            registry=registry,
        )
        self.subscriptions = Gauge(
            "streamjobs_notifier_subscriptions", "Live channel subscriptions", registry=registry
        )
        self.frames_sent = Counter(
            "streamjobs_notifier_frames_sent_total",
            "Frames written to clients",
            ("transport",),
            registry=registry,
        )
        self.frames_dropped = Counter(
            "streamjobs_notifier_frames_dropped_total",
            "Frames dropped from the outbox of a client that fell behind",
            registry=registry,
        )
        self.resyncs = Counter(
            "streamjobs_notifier_resyncs_total",
            "Times a slow client was told to resync",
            registry=registry,
        )
        self.slow_closes = Counter(
            "streamjobs_notifier_slow_consumer_closes_total",
            "Connections closed (4008) for not keeping up",
            registry=registry,
        )
        self.auth_failures = Counter(
            "streamjobs_notifier_auth_failures_total",
            "Connections or subscriptions refused for bad or missing auth",
            ("reason",),
            registry=registry,
        )
        self.connections_refused = Counter(
            "streamjobs_notifier_connections_refused_total",
            "Connections refused at a cap (process_cap: 1013 / 503, user_cap: 4029 / 429)",
            ("reason",),
            registry=registry,
        )
        self.buffered_bytes = Gauge(
            "streamjobs_notifier_buffered_bytes",
            "What is held for WebSocket clients: outboxes and socket buffers (summed when scraped)",
            registry=registry,
        )
        self.owners_known = Gauge(
            "streamjobs_notifier_owners_known",
            "Jobs whose owner is known, beyond the lookback window included",
            registry=registry,
        )
        self.bad_messages = Counter(
            "streamjobs_notifier_bad_messages_total",
            "Client messages that could not be understood",
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "streamjobs_notifier_consumer_lag_records",
            "Records not yet read, summed over the topic's partitions",
            ("topic",),
            registry=registry,
        )
        self.jobs_tracked = Gauge(
            "streamjobs_notifier_jobs_tracked", "Jobs held in memory", registry=registry
        )
        self.records = Counter(
            "streamjobs_notifier_records_total",
            "Kafka records read",
            ("topic",),
            registry=registry,
        )
        self.owned_partitions = Gauge(
            "streamjobs_notifier_owned_partitions",
            "Partitions of the chunks topic this instance reads (its share of the notifiers)",
            registry=registry,
        )
        self.redirects = Counter(
            "streamjobs_notifier_redirects_total",
            "Authorised job subscriptions sent to the instance that serves the job",
            registry=registry,
        )
        self.delivery_latency = Histogram(
            "streamjobs_notifier_delivery_latency_seconds",
            "From a chunk's emitted_at to its frame queued for the subscribers",
            buckets=_DELIVERY_BUCKETS,
            registry=registry,
        )
