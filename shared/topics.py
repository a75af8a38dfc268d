"""Kafka topic, header and consumer-group names: the public contract other teams read."""

from __future__ import annotations

from enum import StrEnum


class Priority(StrEnum):
    """Priority bands, highest first; each band is its own topic."""

    URGENT = "urgent"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 for the most urgent band."""
        return PRIORITY_ORDER.index(self)


PRIORITY_ORDER: tuple[Priority, ...] = (
    Priority.URGENT,
    Priority.HIGH,
    Priority.NORMAL,
    Priority.LOW,
)

PREFIX = "streamjobs"


def job_topic(priority: Priority, prefix: str = PREFIX) -> str:
    return f"{prefix}.jobs.{priority.value}"


def job_topics(prefix: str = PREFIX) -> list[str]:
    return [job_topic(p, prefix) for p in PRIORITY_ORDER]


def retry_topic(prefix: str = PREFIX) -> str:
    return f"{prefix}.jobs.retry"


def dlq_topic(prefix: str = PREFIX) -> str:
    return f"{prefix}.jobs.dlq"


def control_topic(prefix: str = PREFIX) -> str:
    return f"{prefix}.control"


def events_topic(prefix: str = PREFIX) -> str:
    return f"{prefix}.events"


def chunks_topic(prefix: str = PREFIX) -> str:
    return f"{prefix}.chunks"


def webhooks_topic(prefix: str = PREFIX) -> str:
    """Webhook deliveries to make: a job's final event and its URL (key: job_id)."""
    return f"{prefix}.webhooks"


def webhooks_retry_topic(prefix: str = PREFIX) -> str:
    """Webhook deliveries whose last try failed, each with its `not_before` (key: job_id)."""
    return f"{prefix}.webhooks.retry"


def webhook_defaults_topic(prefix: str = PREFIX) -> str:
    """Each user's default webhook URL (key: user_id), compacted, one partition."""
    return f"{prefix}.webhook-defaults"


def revocations_topic(prefix: str = PREFIX) -> str:
    """Revoked token ids (key: jti), compacted, one partition; created by shared.revocation."""
    return f"{prefix}.revocations"


def instances_topic(prefix: str = PREFIX) -> str:
    """Streamer heartbeats (key: instance id), compacted, one partition; a tombstone on exit."""
    return f"{prefix}.instances"


def all_topics(prefix: str = PREFIX) -> list[str]:
    return [
        *job_topics(prefix),
        retry_topic(prefix),
        dlq_topic(prefix),
        control_topic(prefix),
        events_topic(prefix),
        chunks_topic(prefix),
        webhooks_topic(prefix),
        webhooks_retry_topic(prefix),
    ]


# Kafka record headers (bytes values, UTF-8).
HEADER_TYPE = "type"
HEADER_SCHEMA_VERSION = "schema_version"
HEADER_TRACEPARENT = "traceparent"

# Consumer groups.
GROUP_STREAMER = "streamjobs-streamer"
GROUP_RESULTS = "streamjobs-results"
# The results service's webhook groups: its own group id with these suffixes.
WEBHOOK_PLANNER_SUFFIX = "-webhook-planner"  # final events -> deliveries
WEBHOOK_DELIVERER_SUFFIX = "-webhook-deliverer"
GROUP_WEBHOOK_PLANNER = GROUP_RESULTS + WEBHOOK_PLANNER_SUFFIX
GROUP_WEBHOOK_DELIVERER = GROUP_RESULTS + WEBHOOK_DELIVERER_SUFFIX
