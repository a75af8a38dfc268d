"""The requesting side of admission: a request goes to the owner of the user's admission
partition, the decision comes back in-process or on the replies topic.

A decision this gateway made itself as the owner comes in-process (`deliver`), once its
transaction committed. Another owner's comes on this gateway's own partition of the
replies topic (`reply_partition`, named in each request), followed from the end, read
committed (a reply is seen only once its job's records are too); a reply to another
instance sharing the partition is dropped at its reply-to header, before parsing.

A request given up on (the requester answered 503) may still be accepted: its transaction
began before accept_by and committed late. Such requests are remembered for a while, and
an acceptance that comes for one goes to `on_late`, which voids the job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiokafka import TopicPartition

from services.gateway.admission_owner import DECISIONS_FETCH_WAIT_MS
from services.gateway.admission_records import (
    HEADER_REPLY_TO,
    AdmissionRequest,
    Decision,
    Outcome,
    replies_topic,
)
from shared.follower import Batch, PartitionFollower, StartAt
from shared.kafka import KafkaOptions

log = logging.getLogger(__name__)

# (user id, request record): appended to the admission topic, raises on a failed send.
SendRequest = Callable[[str, bytes], Awaitable[None]]
# Takes a request in-process where this gateway decides for its user: True, then it is not sent.
OfferRequest = Callable[[AdmissionRequest], bool]
LateAcceptance = Callable[[AdmissionRequest, Decision], None]
# Requests given up on and still watched for a late acceptance: the most, and for how long.
MAX_ABANDONED = 10_000
ABANDONED_S = 300.0


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
        reply_partition: int | None = None,
        security: KafkaOptions | None = None,
    ) -> None:
        """`reply_partition`: the one replies partition read; None reads them all."""
        self.send = send
        self.instance = instance
        self.reply_partition = reply_partition
        self._reply_to = instance.encode()
        self._waiting: dict[str, asyncio.Future[Decision]] = {}
        # request id -> (request, until when watched), oldest first.
        self._abandoned: OrderedDict[str, tuple[AdmissionRequest, float]] = OrderedDict()
        self.on_late: LateAcceptance | None = None
        self.offer: OfferRequest | None = None
        self.follower = PartitionFollower(
            bootstrap,
            [replies_topic(prefix)],
            self._handle,
            start=StartAt.END,
            choose=None if reply_partition is None else self._own_partition,
            poll_ms=500,
            name="gateway-replies",
            security=security,
            client_id=f"gateway-replies-{instance}",
            fetch_max_wait_ms=DECISIONS_FETCH_WAIT_MS,
        )

    def _own_partition(self, found: list[TopicPartition]) -> list[TopicPartition]:
        return [tp for tp in found if tp.partition == self.reply_partition]

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
                if self.offer is None or not self.offer(request):
                    await self.send(request.user_id, request.to_bytes())
                return await answer
        except TimeoutError:
            self._abandon(request)
            return None
        finally:
            del self._waiting[request.request_id]

    def _abandon(self, request: AdmissionRequest) -> None:
        now = time.monotonic()
        while self._abandoned and (
            len(self._abandoned) >= MAX_ABANDONED or next(iter(self._abandoned.values()))[1] < now
        ):
            self._abandoned.popitem(last=False)
        self._abandoned[request.request_id] = (request, now + ABANDONED_S)

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
                self.deliver(decision)

    def deliver(self, decision: Decision) -> None:
        """A committed decision on one of this gateway's requests: its answer, or, for a
        request given up on, a late acceptance to void."""
        waiting = self._waiting.get(decision.request_id)
        if waiting is not None and not waiting.done():
            waiting.set_result(decision)
            return
        abandoned = self._abandoned.pop(decision.request_id, None)
        late = abandoned is not None and decision.outcome is Outcome.ACCEPTED
        if late and abandoned is not None and self.on_late is not None:
            self.on_late(abandoned[0], decision)
