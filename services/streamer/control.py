"""The control topic reader: every instance reads all of it, from the end, for CancelJob."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from shared.contracts import CancelJob, CancelJobData, parse_record
from shared.topics import control_topic

log = logging.getLogger(__name__)


class ControlReader:
    def __init__(
        self, bootstrap: str, prefix: str, on_cancel: Callable[[str, CancelJobData], None]
    ) -> None:
        self.topic = control_topic(prefix)
        self.on_cancel = on_cancel
        # No group: each instance must see every cancel, whichever instance runs the job.
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self._assigned = False

    async def start(self, timeout_s: float = 30.0) -> None:
        consumer = self.consumer
        # Without a group, aiokafka assigns every partition of the subscribed topic itself.
        consumer.subscribe([self.topic])
        await consumer.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not consumer.assignment():
            if loop.time() > deadline:
                raise TimeoutError(f"no partitions of {self.topic} after {timeout_s:g} s")
            await asyncio.sleep(0.05)
        tps = sorted(consumer.assignment())
        await consumer.seek_to_end(*tps)
        # Resolve the end offsets now: a cancel sent right after start must not be skipped.
        for tp in tps:
            await consumer.position(tp)
        self._assigned = True

    def ready(self) -> bool:
        return self._assigned

    async def stop(self) -> None:
        await self.consumer.stop()

    async def loop(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    try:
                        parsed = parse_record(record.value or b"")
                    except ValidationError:
                        # The control topic is shared by every instance; one bad record is
                        # logged here, not dead-lettered N times.
                        log.warning("unparseable control record at offset %d", record.offset)
                        continue
                    if isinstance(parsed, CancelJob):
                        self.on_cancel(parsed.job_id, parsed.data)
