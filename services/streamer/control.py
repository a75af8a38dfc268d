"""The control topic reader: every instance reads all of it, from the end, for CancelJob."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from shared.contracts import CancelJob, CancelJobData, parse_record
from shared.kafka import KafkaOptions, assign_every_partition
from shared.topics import control_topic

log = logging.getLogger(__name__)


class ControlReader:
    def __init__(
        self,
        bootstrap: str,
        prefix: str,
        on_cancel: Callable[[str, CancelJobData], None],
        *,
        security: KafkaOptions | None = None,
    ) -> None:
        self.topic = control_topic(prefix)
        self.on_cancel = on_cancel
        # No group: each instance must see every cancel, whichever instance runs the job.
        self.consumer = AIOKafkaConsumer(
            **(security or {}), bootstrap_servers=bootstrap, enable_auto_commit=False
        )
        self._assigned = False

    async def start(self, timeout_s: float = 30.0) -> None:
        consumer = self.consumer
        await consumer.start()
        tps = await assign_every_partition(consumer, [self.topic], timeout_s=timeout_s)
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
