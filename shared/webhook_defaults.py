"""Each user's default webhook URL: a compacted topic keyed by user id, written by
`PUT /api/v1/webhook` and read whole by every gateway into memory.

The gateway has no database, and every instance must know every user's default to put it
in the job records it builds: like the revocations, the topic is small (one record per user
that set a default) and read from its beginning at start-up, then followed. A record with
`url` null (or a tombstone) clears the default.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from aiokafka import ConsumerRecord
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.follower import PartitionFollower, StartAt, each_record
from shared.kafka import KafkaOptions
from shared.topics import webhook_defaults_topic

log = logging.getLogger(__name__)

Send = Callable[[str, bytes, bytes], Awaitable[None]]  # topic, key, value


class WebhookDefaultSet(BaseModel):
    """The value of a webhook-defaults record; the key is the same `user_id`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    user_id: str
    url: str | None = Field(description="the default for the user's jobs; null: none")
    set_at: datetime


class WebhookDefaults:
    """Every user's default URL, as the topic says, and this instance's own writes."""

    def __init__(self) -> None:
        self._urls: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._urls)

    def get(self, user_id: str) -> str | None:
        return self._urls.get(user_id)

    def apply(self, user_id: str, url: str | None) -> None:
        if url is None:
            self._urls.pop(user_id, None)
        else:
            self._urls[user_id] = url

    def apply_record(self, record: ConsumerRecord[bytes, bytes]) -> None:
        if record.key is None:
            log.warning("webhook default without a key at offset %d", record.offset)
            return
        user_id = record.key.decode(errors="replace")
        if record.value is None:
            self.apply(user_id, None)
            return
        try:
            value = WebhookDefaultSet.model_validate_json(record.value)
        except ValidationError:
            # Every gateway reads this topic: one bad record is logged, never fatal.
            log.warning("unreadable webhook default at offset %d", record.offset)
            return
        self.apply(user_id, value.url)


def defaults_follower(
    bootstrap: str,
    prefix: str,
    defaults: WebhookDefaults,
    *,
    client_id: str,
    security: KafkaOptions | None = None,
) -> PartitionFollower:
    """A follower of the whole topic (no group: every instance reads every record)."""
    return PartitionFollower(
        bootstrap,
        [webhook_defaults_topic(prefix)],
        each_record(defaults.apply_record),
        start=StartAt.BEGINNING,
        poll_ms=500,
        name="webhook-defaults",
        security=security,
        client_id=client_id,
        auto_offset_reset="earliest",
    )


async def publish_default(
    send: Send, prefix: str, user_id: str, url: str | None, at: datetime
) -> None:
    record = WebhookDefaultSet(user_id=user_id, url=url, set_at=at)
    await send(webhook_defaults_topic(prefix), user_id.encode(), record.model_dump_json().encode())
