"""The gateway's Kafka channels: it submits and cancels jobs and keeps a view of the events."""

from __future__ import annotations

from shared.channels import CONTROL, EVENTS, JOBS, REVOCATIONS_FOLLOWER, Consumer, ServiceChannels

# The events view reads every partition from a lookback window: each instance sees every job.
EVENTS_VIEW = Consumer("events-view", (EVENTS,))

GATEWAY = ServiceChannels(
    "gateway",
    publishes=(*JOBS, CONTROL, EVENTS),
    consumers=(EVENTS_VIEW, REVOCATIONS_FOLLOWER),
)
