"""The results service's Kafka channels: it persists events and chunks in one group,
and delivers webhooks."""

from __future__ import annotations

from shared.channels import (
    CHUNKS,
    DLQ,
    EVENTS,
    INSTANCES,
    REVOCATIONS_FOLLOWER,
    WEBHOOKS,
    WEBHOOKS_RETRY,
    Consumer,
    ServiceChannels,
)
from shared.topics import GROUP_RESULTS, GROUP_WEBHOOK_DELIVERER, GROUP_WEBHOOK_PLANNER

PERSISTER = Consumer("persister", (EVENTS, CHUNKS), group=GROUP_RESULTS)
# The final events of jobs that name a webhook become deliveries (a group of its own, so
# the persister's batching is untouched); the deliverer POSTs them and schedules retries.
WEBHOOK_PLANNER = Consumer("webhook-planner", (EVENTS,), group=GROUP_WEBHOOK_PLANNER)
WEBHOOK_DELIVERER = Consumer(
    "webhook-deliverer", (WEBHOOKS, WEBHOOKS_RETRY), group=GROUP_WEBHOOK_DELIVERER
)
# No group: every instance keeps the latest heartbeat of every streamer.
INSTANCES_READER = Consumer("instances", (INSTANCES,))

RESULTS = ServiceChannels(
    "results",
    publishes=(DLQ, WEBHOOKS, WEBHOOKS_RETRY),  # records it cannot store; deliveries
    consumers=(
        PERSISTER,
        WEBHOOK_PLANNER,
        WEBHOOK_DELIVERER,
        REVOCATIONS_FOLLOWER,
        INSTANCES_READER,
    ),
)
