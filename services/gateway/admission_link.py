"""The requesting side of admission: a request goes to the owner of the user's admission
partition, the decision comes back on the decisions topic.

Every gateway follows every decisions partition from the end (read committed: a decision
is seen only once its job's records are too) and picks out its own by the reply-to header
before parsing anything; a decision it did not ask for is dropped at that header.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from services.gateway.admission_owner import FETCH_WAIT_MS
from services.gateway.admission_records import (
    HEADER_REPLY_TO,
    AdmissionRequest,
    Decision,
    decisions_topic,
)
from shared.follower import Batch, PartitionFollower, StartAt
from shared.kafka import KafkaOptions

log = logging.getLogger(__name__)

# (user id, request record): appended to the admission topic, raises on a failed send.
SendRequest = Callable[[str, bytes], Awaitable[None]]


class AdmissionLink(Protocol):
    async def ask(self, request: AdmissionRequest, timeout_s: float) -> Decision | None:
        """The decision on `request`, or None when none came within `timeout_s`."""
        ...


class KafkaAdmissionLink:
    def __init__(
        self,
        bootstrap: str,
        prefix: str,
        send: SendRequest,
        *,
        instance: str,
        security: KafkaOptions | None = None,
    ) -> None:
        self.send = send
        self.instance = instance
        self._reply_to = instance.encode()
        self._waiting: dict[str, asyncio.Future[Decision]] = {}
        self.follower = PartitionFollower(
            bootstrap,
            [decisions_topic(prefix)],
            self._handle,
            start=StartAt.END,
            poll_ms=500,
            name="gateway-decisions",
            security=security,
            client_id=f"gateway-decisions-{instance}",
            fetch_max_wait_ms=FETCH_WAIT_MS,
        )

    async def start(self, timeout_s: float = 30.0) -> None:
        await self.follower.start(timeout_s)

    async def stop(self) -> None:
        await self.follower.stop()

    async def loop(self) -> None:
        await self.follower.run()

    async def ask(self, request: AdmissionRequest, timeout_s: float) -> Decision | None:
        answer: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._waiting[request.request_id] = answer  # before the send: a reply may be quick
        try:
            async with asyncio.timeout(timeout_s):
                await self.send(request.user_id, request.to_bytes())
                return await answer
        except TimeoutError:
            return None
        finally:
            del self._waiting[request.request_id]

    def _handle(self, batch: Batch) -> None:
        for records in batch.values():
            for record in records:
                if (HEADER_REPLY_TO, self._reply_to) not in record.headers:
                    continue
                try:
                    decision = Decision.from_bytes(record.value or b"")
                except (ValueError, KeyError, TypeError):
                    log.warning("unreadable decision at offset %d", record.offset)
                    continue
                waiting = self._waiting.get(decision.request_id)
                if waiting is not None and not waiting.done():
                    waiting.set_result(decision)
