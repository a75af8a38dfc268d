"""The streamer's Prometheus metrics, declared once per service instance registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Loop lag: admission closes at tens of milliseconds; an overloaded loop lags by seconds.
_LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class StreamerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("job_type", "priority")
        self.jobs_started = Counter(
            "streamjobs_streamer_jobs_started_total", "Attempts started", labels, registry=registry
        )
        self.jobs_completed = Counter(
            "streamjobs_streamer_jobs_completed_total", "Jobs completed", labels, registry=registry
        )
        self.jobs_failed = Counter(
            "streamjobs_streamer_jobs_failed_total",
            "Jobs failed for good",
            labels,
            registry=registry,
        )
        self.jobs_cancelled = Counter(
            "streamjobs_streamer_jobs_cancelled_total", "Jobs cancelled", labels, registry=registry
        )
        self.jobs_retried = Counter(
            "streamjobs_streamer_jobs_retried_total",
            "Attempts re-queued for a retry",
            labels,
            registry=registry,
        )
        self.jobs_preempted = Counter(
            "streamjobs_streamer_jobs_preempted_total",
            "Attempts stopped for an urgent job; each job runs again as its next attempt",
            labels,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "streamjobs_streamer_queue_wait_seconds",
            "From submission (or retry due time) to the attempt's start",
            ("priority",),
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "streamjobs_streamer_time_to_first_token_seconds",
            "From the attempt's start to its first token",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.job_duration = Histogram(
            "streamjobs_streamer_job_duration_seconds",
            "From the attempt's start to its final state",
            ("outcome",),
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "streamjobs_streamer_tokens_streamed_total",
            "Tokens read from the upstream",
            registry=registry,
        )
        self.chunks = Counter(
            "streamjobs_streamer_chunks_published_total",
            "Chunk records published",
            registry=registry,
        )
        self.upstream_errors = Counter(
            "streamjobs_streamer_upstream_errors_total",
            "Upstream failures by kind",
            ("kind",),
            registry=registry,
        )
        self.dead_lettered = Counter(
            "streamjobs_streamer_dead_lettered_total",
            "Records sent to the DLQ",
            ("reason",),
            registry=registry,
        )
        self.rejected_jobs_failed = Counter(
            "streamjobs_streamer_rejected_jobs_failed_total",
            "Job records rejected at intake whose job.failed was published, by error type",
            ("reason",),
            registry=registry,
        )
        self.rejected_without_job_id = Counter(
            "streamjobs_streamer_rejected_without_job_id_total",
            "Job records rejected at intake with no job id to report a failure under",
            registry=registry,
        )
        self.jobs_appended_late = Counter(
            "streamjobs_streamer_jobs_appended_late_total",
            "Job records not run: appended after the gateway had given up on them",
            registry=registry,
        )
        self.control_records_skipped = Counter(
            "streamjobs_streamer_control_records_skipped_total",
            "Control records that could not be read or obeyed, by error type",
            ("reason",),
            registry=registry,
        )
        self.control_dead_letters_dropped = Counter(
            "streamjobs_streamer_control_dead_letters_dropped_total",
            "Skipped control records not dead-lettered because the DLQ backlog was full",
            registry=registry,
        )
        self.cancels_ignored = Counter(
            "streamjobs_streamer_cancels_ignored_total",
            "Cancels ignored because they came from neither the job's owner nor an admin",
            registry=registry,
        )
        self.cancels_evicted = Counter(
            "streamjobs_streamer_remembered_cancels_evicted_total",
            "Remembered cancels of unfetched jobs dropped, oldest first, to stay within bound",
            registry=registry,
        )
        self.cancels_remembered = Gauge(
            "streamjobs_streamer_remembered_cancels",
            "Cancels remembered for jobs not fetched yet",
            registry=registry,
        )
        self.loop_errors = Counter(
            "streamjobs_streamer_loop_errors_total",
            "Kafka errors a consumer loop survived by backing off, per loop",
            ("loop",),
            registry=registry,
        )
        self.attempts_lost_to_kafka = Counter(
            "streamjobs_streamer_attempts_lost_to_kafka_total",
            "Attempts abandoned because Kafka failed under them; each job runs again",
            registry=registry,
        )
        self.attempts_cut_by_rebalance = Counter(
            "streamjobs_streamer_attempts_cut_by_rebalance_total",
            "Attempts cut short because their partition moved; the next owner reruns them",
            registry=registry,
        )
        self.jobs_kept_by_rebalance = Counter(
            "streamjobs_streamer_jobs_kept_by_rebalance_total",
            "Jobs fetched and not final whose partition a rebalance assigned back: they go on",
            registry=registry,
        )
        self.claims_loaded = Counter(
            "streamjobs_streamer_claims_loaded_total",
            "Jobs whose started attempts were read from the events topic on an assignment",
            registry=registry,
        )
        self.claims_events_read = Counter(
            "streamjobs_streamer_claims_events_read_total",
            "Events read from the events topic to learn the claims on assigned partitions",
            registry=registry,
        )
        self.claims_read_seconds = Histogram(
            "streamjobs_streamer_claims_read_seconds",
            "Time from an assignment to its claims read, before any of its jobs is taken",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.jobs_deferred = Counter(
            "streamjobs_streamer_jobs_deferred_total",
            "Jobs re-queued untried because every upstream's circuit breaker was open",
            registry=registry,
        )
        self.upstream_fallbacks = Counter(
            "streamjobs_streamer_upstream_fallbacks_total",
            "Attempts that failed on one upstream and went straight to the next of the route",
            ("upstream", "to"),
            registry=registry,
        )
        self.breaker_state = Gauge(
            "streamjobs_streamer_breaker_state",
            "Circuit breaker per upstream of the workload file: 0 closed, 1 open, 2 half-open",
            ("upstream",),
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "streamjobs_streamer_consumer_lag_records",
            "Job records fetched-but-unfinished or not yet fetched, per topic and band",
            ("topic", "band"),
            registry=registry,
        )
        self.slots_in_use = Gauge(
            "streamjobs_streamer_slots_in_use", "Job slots busy", registry=registry
        )
        self.jobs_waiting = Gauge(
            "streamjobs_streamer_jobs_waiting",
            "Jobs fetched, waiting for a slot",
            registry=registry,
        )
        self.loop_lag = Histogram(
            "streamjobs_streamer_loop_lag_seconds",
            "How much later than asked the event loop ran a short sleep's wake-up",
            buckets=_LOOP_LAG_BUCKETS,
            registry=registry,
        )
        self.overloaded = Gauge(
            "streamjobs_streamer_overloaded",
            "1 while the loop lags too much to start new jobs (urgent ones replace finished"
            " ones), else 0",
            registry=registry,
        )
        self.fence_checks = Counter(
            "streamjobs_streamer_priority_fence_checks_total",
            "End offsets of the higher bands read before starting a job below the top band",
            registry=registry,
        )
        self.fence_holds = Counter(
            "streamjobs_streamer_priority_fence_holds_total",
            "Times a lower band's job waited for a higher band's records to be fetched first",
            registry=registry,
        )
        self.usage_estimated = Counter(
            "streamjobs_streamer_usage_estimated_total",
            "Completions whose upstream reported no usage: tokens counted from the stream",
            registry=registry,
        )
        self.tool_calls = Counter(
            "streamjobs_streamer_tool_calls_total",
            "Tool calls of completed jobs, assembled from their streamed deltas",
            registry=registry,
        )
