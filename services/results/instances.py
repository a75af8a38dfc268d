"""The streamer instances board: the latest heartbeat of each streamer, read from the
compacted instances topic, and what `GET /api/v1/instances` answers from it.

`Board` is the pure part (records in, views out, staleness by the heartbeat's own
period); `InstancesReader` follows the topic from its beginning into a board.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from aiokafka import ConsumerRecord
from pydantic import ValidationError

from shared.api import InstanceList, InstanceView
from shared.follower import PartitionFollower, StartAt, each_record
from shared.instances import StreamerHeartbeat
from shared.kafka import KafkaOptions

log = logging.getLogger(__name__)

# A streamer is gone after this many of its periods without a heartbeat...
STALE_PERIODS = 3.0
# ...and forgotten after this long gone (its record stays until compaction or a tombstone).
FORGET_AFTER = timedelta(hours=1)


class Board:
    """The latest heartbeat per instance id; a tombstone removes its instance."""

    def __init__(self, *, stale_periods: float = STALE_PERIODS) -> None:
        self.stale_periods = stale_periods
        self.latest: dict[str, StreamerHeartbeat] = {}

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            log.warning("instance heartbeat without a key")
            return
        instance = key.decode(errors="replace")
        if value is None:
            self.latest.pop(instance, None)
            return
        try:
            beat = StreamerHeartbeat.model_validate_json(value)
        except ValidationError:
            log.warning("unparseable heartbeat of instance %s", instance)
            return
        known = self.latest.get(instance)
        # Compaction and replays may bring an older record after a newer one.
        if known is None or beat.sent_at >= known.sent_at:
            self.latest[instance] = beat

    def view(self, now: datetime) -> InstanceList:
        items: list[InstanceView] = []
        for beat in self.latest.values():
            silent = now - beat.sent_at
            if silent > FORGET_AFTER:
                continue
            gone = silent.total_seconds() > self.stale_periods * beat.interval_s
            items.append(
                InstanceView(
                    instance_id=beat.instance_id,
                    host=beat.host,
                    pid=beat.pid,
                    state="gone" if gone else "up",
                    slots_total=beat.slots_total,
                    slots_in_use=beat.slots_in_use,
                    jobs_running=beat.jobs_running,
                    jobs_waiting=beat.jobs_waiting,
                    partitions=beat.partitions,
                    loop_lag_ms=beat.loop_lag_ms,
                    overloaded=beat.overloaded,
                    started_at=beat.started_at,
                    last_seen=beat.sent_at,
                    interval_s=beat.interval_s,
                )
            )
        items.sort(key=lambda v: (v.state != "up", v.instance_id))
        return InstanceList(items=items)


class InstancesReader:
    """Follows the instances topic, without a group, from its beginning into `board`."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        board: Board,
        *,
        client_id: str,
        security: KafkaOptions | None = None,
    ) -> None:
        self.board = board
        self._follower = PartitionFollower(
            bootstrap,
            [topic],
            each_record(self._apply),
            start=StartAt.BEGINNING,
            poll_ms=500,
            backoff_s=(0.1, 5.0),
            name="instances",
            security=security,
            client_id=client_id,
            auto_offset_reset="earliest",
        )

    def _apply(self, record: ConsumerRecord[bytes, bytes]) -> None:
        self.board.apply(record.key, record.value)

    async def start(self) -> None:
        await self._follower.start()

    async def loop(self) -> None:
        await self._follower.run()

    async def stop(self) -> None:
        await self._follower.stop()

    def view(self) -> InstanceList:
        return self.board.view(datetime.now(UTC))
