"""Declarations of our Kafka channels and of each service's use of them.

A `Channel` is one topic of the contract: its name under the prefix, the record types on it,
what it is for and what its records are keyed by. A `ServiceChannels` says which channels a
service publishes and which it consumes, through which of its consumers and consumer group.
The services read their topic lists from these declarations; the AsyncAPI document
(`shared.asyncapi`) and the Kafka ACLs (`deploy.localstack.acls`) are derived from them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from shared.contracts import (
    CancelJob,
    JobAccepted,
    JobCancelled,
    JobCompleted,
    JobDeadLettered,
    JobFailed,
    JobRetrying,
    JobStarted,
    RunJob,
    TokenChunk,
    WebhookDelivery,
)
from shared.instances import StreamerHeartbeat
from shared.revocation import TokenRevoked
from shared.topics import (
    PREFIX,
    PRIORITY_ORDER,
    chunks_topic,
    control_topic,
    dlq_topic,
    events_topic,
    instances_topic,
    job_topic,
    retry_topic,
    revocations_topic,
    webhook_defaults_topic,
    webhooks_retry_topic,
    webhooks_topic,
)
from shared.webhook_defaults import WebhookDefaultSet


@dataclass(frozen=True)
class Channel:
    """One topic: `topic_of(prefix)` names it; `name` is its name under the prefix."""

    name: str
    topic_of: Callable[[str], str]
    records: tuple[type[Any], ...]  # pydantic models or dataclasses
    description: str
    key: str = "job_id"

    def topic(self, prefix: str = PREFIX) -> str:
        return self.topic_of(prefix)


@dataclass(frozen=True)
class Consumer:
    """One consumer of a service over `channels`; `group` is its default consumer group.

    No group (`None`) means the consumer reads every partition itself, so each instance
    sees every record. `group_of(prefix)` names a group under the topic prefix instead.
    """

    name: str
    channels: tuple[Channel, ...]
    group: str | None = None
    group_of: Callable[[str], str] | None = None

    def group_name(self, prefix: str = PREFIX) -> str | None:
        return self.group_of(prefix) if self.group_of is not None else self.group

    def topics(self, prefix: str = PREFIX) -> list[str]:
        return [channel.topic(prefix) for channel in self.channels]


@dataclass(frozen=True)
class ServiceChannels:
    """What one service (also its Kafka principal) publishes and consumes; `transactional_ids`
    names the prefix of its transactional producers' ids, if it has any."""

    service: str
    publishes: tuple[Channel, ...]
    consumers: tuple[Consumer, ...]
    transactional_ids: Callable[[str], str] | None = None

    @property
    def consumes(self) -> tuple[Channel, ...]:
        # Each channel once, though two consumers read it (the results' persister and
        # webhook planner both read the events).
        return tuple(
            dict.fromkeys(channel for consumer in self.consumers for channel in consumer.channels)
        )

    @property
    def groups(self) -> list[str]:
        return [c.group for c in self.consumers if c.group is not None]


JOBS: tuple[Channel, ...] = tuple(
    Channel(
        f"jobs.{priority.value}",
        partial(job_topic, priority),
        (RunJob,),
        f"Job requests of priority {priority.value}.",
    )
    for priority in PRIORITY_ORDER
)
RETRY = Channel(
    "jobs.retry",
    retry_topic,
    (RunJob,),
    "Delayed retries: RunJob with attempt > 1 and not_before.",
)
DLQ = Channel(
    "jobs.dlq",
    dlq_topic,
    (JobDeadLettered,),
    "Jobs and records that failed for good, with the reason.",
)
CONTROL = Channel(
    "control", control_topic, (CancelJob,), "Cancel commands; every streamer reads all of it."
)
EVENTS = Channel(
    "events",
    events_topic,
    (JobAccepted, JobStarted, JobRetrying, JobCompleted, JobFailed, JobCancelled),
    "Job lifecycle facts; one key per job keeps each job's events in order.",
)
CHUNKS = Channel(
    "chunks",
    chunks_topic,
    (TokenChunk,),
    "Coalesced token chunks: (job_id, attempt, seq) is unique.",
)
WEBHOOKS = Channel(
    "webhooks",
    webhooks_topic,
    (WebhookDelivery,),
    "Webhook deliveries: a job's final event to POST to its URL (webhook_id is the same on"
    " every try).",
)
WEBHOOKS_RETRY = Channel(
    "webhooks.retry",
    webhooks_retry_topic,
    (WebhookDelivery,),
    "Webhook deliveries whose last try failed: attempt > 1 and not_before.",
)
WEBHOOK_DEFAULTS = Channel(
    "webhook-defaults",
    webhook_defaults_topic,
    (WebhookDefaultSet,),
    "Each user's default webhook URL (null: none), compacted, one partition; a plain record,"
    " not an envelope.",
    key="user_id",
)
REVOCATIONS = Channel(
    "revocations",
    revocations_topic,
    (TokenRevoked,),
    "Revoked token ids, compacted, one partition; a plain record, not an envelope.",
    key="jti",
)

# Every service that checks tokens follows the revocations (shared.revocation).
REVOCATIONS_FOLLOWER = Consumer("revocations", (REVOCATIONS,))
INSTANCES = Channel(
    "instances",
    instances_topic,
    (StreamerHeartbeat,),
    "Streamer heartbeats, compacted, one partition; a tombstone when a streamer stops.",
    key="instance_id",
)
