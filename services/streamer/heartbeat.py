"""The streamer's heartbeat: its slots, jobs, partitions and loop lag, every few seconds,
on the compacted instances topic keyed by its instance id; a tombstone on a clean stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shared.instances import StreamerHeartbeat

log = logging.getLogger(__name__)


class Heartbeat:
    """Publishes `snapshot()` every `interval_s`; `stop()` sends the tombstone."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        instance_id: str,
        snapshot: Callable[[datetime], StreamerHeartbeat],
        *,
        interval_s: float,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.key = instance_id.encode()
        self.snapshot = snapshot
        self.interval_s = interval_s

    async def beat(self) -> None:
        value = self.snapshot(datetime.now(UTC)).model_dump_json().encode()
        await self.producer.send_and_wait(self.topic, key=self.key, value=value)

    async def loop(self) -> None:
        while True:
            try:
                await self.beat()
            except KafkaError as exc:
                # A missed beat is only a gap on the board; the next one comes in a period.
                log.warning("heartbeat not sent: %s", exc)
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        """The tombstone: this instance is gone for good, not merely silent."""
        try:
            async with asyncio.timeout(max(self.interval_s, 2.0)):
                await self.producer.send_and_wait(self.topic, key=self.key, value=None)
        except (KafkaError, TimeoutError) as exc:
            log.warning("heartbeat tombstone not sent: %s", exc)
