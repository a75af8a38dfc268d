"""The gateway's Kafka publisher port: one record, or one record retried until the broker
takes it. Built over any `send(topic, envelope)`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiokafka.errors import KafkaError

from shared.contracts import Envelope
from shared.retry import retry_until_done

Publish = Callable[[str, Envelope], Awaitable[None]]
PUBLISH_ERRORS = (KafkaError, TimeoutError, OSError)


class Publisher:
    def __init__(self, send: Publish, *, timeout_s: float) -> None:
        self.send = send
        self.timeout_s = timeout_s

    async def once(self, topic: str, record: Envelope) -> None:
        """Publish one record within the timeout; raises one of `PUBLISH_ERRORS`."""
        async with asyncio.timeout(self.timeout_s):
            await self.send(topic, record)

    async def until_taken(self, topic: str, record: Envelope) -> None:
        """Publish until the broker has it (its event id dedupes), or until cancelled."""
        await retry_until_done(
            lambda: self.once(topic, record),
            PUBLISH_ERRORS,
            what=f"publishing {record.type}",
            log_extra={"job_id": record.job_id, "trace_id": record.trace_id},
        )
