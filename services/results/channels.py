"""The results service's Kafka channels: it persists events and chunks in one group."""

from __future__ import annotations

from shared.channels import (
    CHUNKS,
    DLQ,
    EVENTS,
    INSTANCES,
    REVOCATIONS_FOLLOWER,
    Consumer,
    ServiceChannels,
)
from shared.topics import GROUP_RESULTS

PERSISTER = Consumer("persister", (EVENTS, CHUNKS), group=GROUP_RESULTS)
# No group: every instance keeps the latest heartbeat of every streamer.
INSTANCES_READER = Consumer("instances", (INSTANCES,))

RESULTS = ServiceChannels(
    "results",
    publishes=(DLQ,),  # records it cannot store
    consumers=(PERSISTER, REVOCATIONS_FOLLOWER, INSTANCES_READER),
)
