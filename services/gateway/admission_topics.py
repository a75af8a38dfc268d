"""The admission topics: requests, decisions and replies, one partition count (a user's
decisions share the number of the partition its requests are on; a gateway's replies are on
the partition its instance id names)."""

from __future__ import annotations

from services.gateway.admission_records import admissions_topic, decisions_topic, replies_topic
from shared.kafka import JOB_TOPIC_CONFIGS, TopicSpec


def admission_topics(prefix: str, partitions: int) -> dict[str, TopicSpec]:
    """What `shared.kafka.ensure_created` makes of them where they are missing."""
    return {
        # The broker's clock judges a request's accept_by, as it does a job command's.
        admissions_topic(prefix): TopicSpec(partitions, JOB_TOPIC_CONFIGS),
        decisions_topic(prefix): TopicSpec(partitions),
        replies_topic(prefix): TopicSpec(partitions),
    }
