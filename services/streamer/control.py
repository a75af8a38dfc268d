"""The control topic reader: every instance reads all of it, from the end, for CancelJob."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from services.streamer.rejects import Rejected
from shared.contracts import CancelJob, CancelJobData, parse_record
from shared.follower import PartitionFollower, StartAt, each_record
from shared.kafka import KafkaOptions
from shared.topics import control_topic

log = logging.getLogger(__name__)


class ControlReader:
    """Obeys cancels; a record it cannot read or obey goes to `skip` and the reading goes on.

    `skip` must not block: cancels of running jobs must not wait behind a slow DLQ.
    """

    def __init__(
        self,
        bootstrap: str,
        prefix: str,
        on_cancel: Callable[[str, CancelJobData], None],
        skip: Callable[[Rejected], None],
        *,
        on_kafka_error: Callable[[], None] = lambda: None,
        backoff_s: tuple[float, float] = (0.2, 10.0),
        security: KafkaOptions | None = None,
    ) -> None:
        self.topic = control_topic(prefix)
        self.on_cancel = on_cancel
        self.skip = skip
        # No group: each instance must see every cancel, whichever instance runs the job.
        self.follower = PartitionFollower(
            bootstrap,
            [self.topic],
            each_record(self._read),
            start=StartAt.END,
            poll_ms=500,
            backoff_s=backoff_s,
            on_kafka_error=on_kafka_error,
            name="control",
            security=security,
        )

    @property
    def consumer(self) -> AIOKafkaConsumer:
        return self.follower.consumer

    async def start(self, timeout_s: float = 30.0) -> None:
        await self.follower.start(timeout_s)

    def ready(self) -> bool:
        return self.follower.assigned

    async def stop(self) -> None:
        await self.follower.stop()

    async def loop(self) -> None:
        await self.follower.run()

    def _read(self, record: ConsumerRecord[bytes, bytes]) -> None:
        def skip(reason: str, error_type: str) -> None:
            self.skip(
                Rejected(
                    record.key,
                    record.value,
                    reason,
                    error_type,
                    record.topic,
                    record.partition,
                    record.offset,
                )
            )

        try:
            parsed = parse_record(record.value or b"")
        except ValidationError as exc:
            errors = exc.errors()
            skip(f"invalid record: {errors[0]['msg'] if errors else exc}", "ValidationError")
            return
        if not isinstance(parsed, CancelJob):
            skip(f"unexpected record type {parsed.type!r}", "WrongType")
            return
        try:
            self.on_cancel(parsed.job_id, parsed.data)
        except Exception as exc:  # a record boundary: one cancel must not stop every other
            log.exception("control record at offset %d broke the reader", record.offset)
            skip(repr(exc), type(exc).__name__)
