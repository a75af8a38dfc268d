"""One owned admission partition's queue of requests fetched and not yet decided: the owner
decides them in group commits, one transaction at a time per partition.

While a transaction commits, the owner keeps fetching and everything that arrives waits
here; the next transaction takes all of it (up to a batch). At low load a transaction
carries one request and its latency is one transaction; under load a transaction carries
what arrived during the last one, so the batch grows with the load and the latency stays
about two transactions.

A request this gateway asked itself, for a user whose partition it owns, is handed to the
lane in-process (`Direct`): it never travels through the admission topic, and a transaction
of such requests alone commits no consumer offset. Should the partition leave before it is
decided, it is appended to the topic after all (`drop` gives it back), for the next owner.

A lane holds two transactional producers, both named for the partition, and uses them in
turn. A transaction begun on the producer whose commit just returned is held back by the
broker until that commit's markers are written (CONCURRENT_TRANSACTIONS, which aiokafka
retries 20 ms later); begun on the other one, it starts at once. A new owner of the
partition initialises both ids, so both of the previous owner's producers are fenced.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import TypeAlias

from aiokafka import AIOKafkaProducer, ConsumerRecord

from services.gateway.admission_records import AdmissionRequest

Record: TypeAlias = ConsumerRecord[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Direct:
    """A request of this gateway's own, handed over in-process."""

    request: AdmissionRequest
    arrived_at: float  # epoch seconds: it stands for the broker's append time


Item: TypeAlias = Record | Direct


class Lane:
    def __init__(self, partition: int, producers: tuple[AIOKafkaProducer, ...]) -> None:
        self.partition = partition
        self.producers = producers
        self._turn = 0
        self._pending: deque[Item] = deque()
        self._next_offset = -1  # past the last record taken in: nothing earlier twice
        self.arrived = asyncio.Event()  # set while requests wait
        self.writing = asyncio.Lock()  # held through a transaction: a revocation waits
        self.task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, records: list[Record]) -> None:
        """Queue fetched requests, in offset order; one queued already is not queued again."""
        for record in records:
            if record.offset >= self._next_offset:
                self._pending.append(record)
                self._next_offset = record.offset + 1
        if self._pending:
            self.arrived.set()

    def offer(self, direct: Direct) -> None:
        """Queue a request of this gateway's own, behind what was fetched before it."""
        self._pending.append(direct)
        self.arrived.set()

    def take(self, most: int) -> list[Item]:
        """The oldest `most` requests waiting, in order (they leave the queue)."""
        pending = self._pending
        taken = [pending.popleft() for _ in range(min(most, len(pending)))]
        if not pending:
            self.arrived.clear()
        return taken

    def put_back(self, items: list[Item]) -> None:
        """Requests whose transaction did not commit: first again, in their order."""
        self._pending.extendleft(reversed(items))
        if self._pending:
            self.arrived.set()

    def drop(self) -> tuple[list[Direct], int | None]:
        """Empty the lane of a partition no longer decided here: the requests handed over
        in-process (to append to the topic after all) and the offset of the first fetched
        request left undecided (None: none)."""
        pending, self._pending = self._pending, deque()
        self.arrived.clear()
        directs = [item for item in pending if isinstance(item, Direct)]
        offsets = [item.offset for item in pending if not isinstance(item, Direct)]
        return directs, min(offsets, default=None)

    def producer(self) -> AIOKafkaProducer:
        """The producer for the next transaction: each in turn."""
        producer = self.producers[self._turn]
        self._turn = (self._turn + 1) % len(self.producers)
        return producer
