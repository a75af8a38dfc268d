"""The notifier's Kafka channels: it only reads, every partition, to push jobs to clients."""

from __future__ import annotations

from shared.channels import CHUNKS, EVENTS, REVOCATIONS_FOLLOWER, Consumer, ServiceChannels

# No group: every instance holds its own clients, so each reads every job's records.
READER = Consumer("reader", (EVENTS, CHUNKS))

NOTIFIER = ServiceChannels("notifier", publishes=(), consumers=(READER, REVOCATIONS_FOLLOWER))
