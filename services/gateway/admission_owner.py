"""The single writer of admission decisions: this gateway's share of the admission topic.

Every gateway joins one consumer group on `{prefix}.admissions` (keyed by user id), so each
partition, and with it each user, has one owner at a time. Per owned partition the owner
holds a transactional producer whose id names the partition: starting it fences whoever
owned the partition before (their open transaction is aborted, their later writes refused).
It then replays the partition's recent decisions into the events view, so it counts every
job a previous owner accepted before the view has read its fact, and only then decides.

The decisions of one poll of a partition are written in ONE transaction together with the
accepted facts, the job commands and the consumer offset: all of it is visible, or none of
it, and a request is decided again only if its decision never committed.

A request this gateway asked itself is answered in-process once its transaction has
committed (`on_local`), rather than through a record read back: the same answer, a fetch
sooner. Another gateway's answer is a copy of the decision on that gateway's partition of
the replies topic, in the same transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError, ProducerFenced

from services.gateway.admission_records import (
    HEADER_REPLY_TO,
    AdmissionRequest,
    Decision,
    Outcome,
    admission_group,
    admissions_topic,
    decisions_topic,
    encode_record,
    replies_topic,
    transactional_id,
)
from services.gateway.decider import apply_decision, decide, undo
from services.gateway.metrics import GatewayMetrics
from services.gateway.view import EventsView
from shared.kafka import Headers, KafkaOptions, traceparent
from shared.topics import (
    HEADER_SCHEMA_VERSION,
    HEADER_TRACEPARENT,
    HEADER_TYPE,
    events_topic,
    job_topic,
)

log = logging.getLogger(__name__)
# The broker answers a fetch at the first append (a transaction marker included), so these
# bound only the wait of a fetch that finds nothing: how often an idle gateway polls. The
# owner's is short all the same: a request decided again after an abort is fetched anew
# only once the fetch in flight has come back.
OWNER_FETCH_WAIT_MS = 50
DECISIONS_FETCH_WAIT_MS = 500
# Per partition: a batch that fills up makes every later send wait for its drain, and the
# owner appends a whole poll's records at once (the broker takes up to 1 MiB per batch).
MAX_BATCH_BYTES = 512 * 1024


def admission_producer(
    bootstrap: str,
    *,
    client_id: str,
    linger_ms: int,
    transactional_id: str | None = None,
    security: KafkaOptions | None = None,
) -> AIOKafkaProducer:
    """A producer of admission traffic: requests, or (with `transactional_id`) an owner's
    decisions and job records. Idempotent: a request retried by the client is one request."""
    return AIOKafkaProducer(
        **(security or {}),
        bootstrap_servers=bootstrap,
        client_id=client_id,
        transactional_id=transactional_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        max_batch_size=MAX_BATCH_BYTES,
    )


# A decision on a request this instance sent, committed: its requester is in this process.
LocalReply = Callable[[Decision], None]


def _headers(record_type: str, trace_id: str) -> Headers:
    return [
        (HEADER_TYPE, record_type.encode()),
        (HEADER_SCHEMA_VERSION, b"1"),
        (HEADER_TRACEPARENT, traceparent(trace_id)),
    ]


class _Overdue(Exception):
    """An acceptance still uncommitted at its request's accept_by."""

    def __str__(self) -> str:
        return "an acceptance was not committed by its accept_by"


async def _commit_in_time(
    producer: AIOKafkaProducer, decided: list[tuple[AdmissionRequest, Decision]]
) -> None:
    """Commit, unless an acceptance's requester is about to answer 503 (then it is aborted
    and decided again: expired). A commit that ends late all the same is voided by it."""
    now = time.time()
    if any(d.outcome is Outcome.ACCEPTED and now > r.accept_by for r, d in decided):
        raise _Overdue
    await producer.commit_transaction()


class _Ownership(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: AdmissionOwner) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.owner.release(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.owner.take(assigned)


class AdmissionOwner:
    def __init__(
        self,
        bootstrap: str,
        prefix: str,
        view: EventsView,
        metrics: GatewayMetrics,
        *,
        instance: str,
        batch: int,
        rebuild_s: float,
        security: KafkaOptions | None = None,
        session_timeout_ms: int = 10_000,
    ) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.view = view
        self.metrics = metrics
        self.instance = instance
        self.batch = batch
        self.rebuild_s = rebuild_s
        self.security = dict(security or {})
        self.session_timeout_ms = session_timeout_ms
        self.topic = admissions_topic(prefix)
        self.decisions = decisions_topic(prefix)
        self.replies = replies_topic(prefix)
        self.group = admission_group(prefix)
        self._producers: dict[int, AIOKafkaProducer] = {}  # the partitions decided here
        self._revoked: dict[int, AIOKafkaProducer] = {}  # revoked, maybe given straight back
        self._consumer: AIOKafkaConsumer | None = None
        self._rebuilder: AIOKafkaConsumer | None = None
        self._deciding = asyncio.Lock()  # a rebalance waits for the transaction under way
        self.paused = asyncio.Event()  # set: decide nothing (operations and tests)
        self.joined = asyncio.Event()  # set at the first assignment, an empty one too
        self.on_local: LocalReply | None = None
        self._reply_to = instance

    @property
    def owned(self) -> list[int]:
        return sorted(self._producers)

    async def start(self) -> None:
        self._rebuilder = AIOKafkaConsumer(
            **self.security,
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            isolation_level="read_committed",
            client_id=f"gateway-admission-rebuild-{self.instance}",
        )
        await self._rebuilder.start()
        self._consumer = AIOKafkaConsumer(
            **self.security,
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            client_id=f"gateway-admission-{self.instance}",
            enable_auto_commit=False,
            isolation_level="read_committed",
            # A partition never decided starts at its beginning: old requests are past
            # their accept_by and are refused, none is lost.
            auto_offset_reset="earliest",
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=max(100, self.session_timeout_ms // 10),
            max_poll_records=self.batch,
            fetch_max_wait_ms=OWNER_FETCH_WAIT_MS,
        )
        self._consumer.subscribe([self.topic], listener=_Ownership(self))
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()  # leaves the group: the partitions move at once
            self._consumer = None
        await self.release([TopicPartition(self.topic, p) for p in self.owned])
        for producer in self._revoked.values():
            await producer.stop()
        self._revoked.clear()
        if self._rebuilder is not None:
            await self._rebuilder.stop()
            self._rebuilder = None

    async def loop(self) -> None:
        assert self._consumer is not None, "start() first"
        consumer = self._consumer
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=self.batch)
            if not batches:
                continue
            async with self._deciding:
                await asyncio.gather(*(self._decide(tp, recs) for tp, recs in batches.items()))

    # -- ownership -------------------------------------------------------------------------

    async def take(self, assigned: Iterable[TopicPartition]) -> None:
        wanted = {tp.partition for tp in assigned}
        # A partition revoked and given straight back was ours all along: its producer and
        # state stand (had another owner had it between, its producer fenced ours, and the
        # next commit says so). The others are fenced from their previous owner and rebuilt.
        for partition in sorted(set(self._revoked) - wanted):
            await self._revoked.pop(partition).stop()
        kept = {p: self._revoked.pop(p) for p in sorted(wanted & set(self._revoked))}
        self._producers.update(kept)
        partitions = sorted(wanted - set(self._producers))
        producers = await asyncio.gather(*(self._fence(p) for p in partitions))
        await self._rebuild(partitions)
        self._producers.update(zip(partitions, producers, strict=True))
        self.metrics.admission_partitions.set(len(self._producers))
        self.joined.set()
        if partitions:
            log.info("admission partitions %s owned by %s", partitions, self.instance)

    async def _fence(self, partition: int) -> AIOKafkaProducer:
        # No linger: a poll's records are all appended before the sender runs, and the
        # commit waits for them; lingering would only delay the commit.
        producer = admission_producer(
            self.bootstrap,
            client_id=f"gateway-admission-{self.instance}-{partition}",
            transactional_id=transactional_id(self.prefix, partition),
            linger_ms=0,
            security=self.security,
        )
        await producer.start()  # InitProducerId: the previous owner is fenced from here on
        return producer

    async def release(self, revoked: Iterable[TopicPartition]) -> None:
        """Decide nothing more on `revoked`; their producers wait for the next assignment."""
        async with self._deciding:
            for tp in revoked:
                producer = self._producers.pop(tp.partition, None)
                if producer is not None:
                    self._revoked[tp.partition] = producer
        self.metrics.admission_partitions.set(len(self._producers))

    async def _rebuild(self, partitions: Sequence[int]) -> None:
        """Count what earlier owners decided lately, read to the last committed decision."""
        rebuilder = self._rebuilder
        if rebuilder is None or not partitions:
            return
        tps = [TopicPartition(self.decisions, p) for p in partitions]
        rebuilder.assign(tps)
        since_ms = int((time.time() - self.rebuild_s) * 1000)
        starts = await rebuilder.offsets_for_times({tp: since_ms for tp in tps})
        ends = await rebuilder.end_offsets(tps)
        left = []
        for tp in tps:
            start = starts.get(tp)
            rebuilder.seek(tp, start.offset if start is not None else ends[tp])
            if (start.offset if start is not None else ends[tp]) < ends[tp]:
                left.append(tp)
        replayed = 0
        while left:
            batch = await rebuilder.getmany(*left, timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    replayed += self._replay(record)
            # Transaction markers take offsets too: the position, not the last record, says.
            left = [tp for tp in left if await rebuilder.position(tp) < ends[tp]]
        rebuilder.assign([])
        log.info("admission partitions %s rebuilt from %d decisions", list(partitions), replayed)

    def _replay(self, record: ConsumerRecord[bytes, bytes]) -> int:
        try:
            decision = Decision.from_bytes(record.value or b"")
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable decision at %s offset %d", record.partition, record.offset)
            return 0
        apply_decision(self.view, decision)
        return 1

    # -- deciding --------------------------------------------------------------------------

    async def _decide(
        self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]
    ) -> None:
        producer = self._producers.get(tp.partition)
        consumer = self._consumer
        if consumer is None:
            return
        if producer is None or self.paused.is_set():
            # Not decided now: read again from the first (the next owner reads from the
            # committed offset anyway).
            consumer.seek(tp, records[0].offset)
            await asyncio.sleep(0.05)
            return
        now = time.time()
        decided: list[tuple[AdmissionRequest, Decision]] = []
        for record in records:
            try:
                request = AdmissionRequest.from_bytes(record.value or b"")
            except (ValueError, KeyError, TypeError):
                self.metrics.admission_decisions.labels("unreadable").inc()
                log.warning("unreadable admission request at %s offset %d", tp, record.offset)
                continue
            decision = decide(self.view, request, now=now, appended_at=record.timestamp / 1000)
            decided.append((request, decision))
        try:
            await producer.begin_transaction()
            sent = []
            for request, decision in decided:
                sent.extend(await self._send_decision(producer, tp.partition, request, decision))
                if decision.outcome is Outcome.ACCEPTED:
                    sent.extend(await self._send_job(producer, request))
            await producer.send_offsets_to_transaction({tp: records[-1].offset + 1}, self.group)
            await asyncio.gather(*sent)
            await _commit_in_time(producer, decided)
        except ProducerFenced:
            # Another producer took the partition's id: nothing of this committed. Still
            # assigned here, the partition is fenced and rebuilt again before deciding; if it
            # is another gateway's now, the group revokes it here at the next heartbeat.
            self._take_back(decided)
            log.warning("admission partition %d fenced: taking it again", tp.partition)
            self._producers.pop(tp.partition, None)
            await producer.stop()
            consumer.seek(tp, records[0].offset)
            if tp in consumer.assignment():
                await self.take([*(TopicPartition(self.topic, p) for p in self.owned), tp])
            return
        except (KafkaError, _Overdue) as exc:
            self._take_back(decided)
            log.warning("admission transaction on %s failed, deciding again: %s", tp, exc)
            await self._abort(producer)
            consumer.seek(tp, records[0].offset)
            return
        done = time.time()
        local = self.on_local
        for request, decision in decided:
            self.metrics.admission_decisions.labels(decision.outcome.value).inc()
            self.metrics.admission_latency.observe(max(0.0, done - request.submitted_at))
            if local is not None and request.reply_to == self._reply_to:
                local(decision)

    async def _send_decision(
        self, producer: AIOKafkaProducer, partition: int, req: AdmissionRequest, d: Decision
    ) -> list[asyncio.Future[object]]:
        value, key = d.to_bytes(), req.user_id.encode()
        headers = [(HEADER_REPLY_TO, req.reply_to.encode())]
        sent: list[asyncio.Future[object]] = [
            await producer.send(
                self.decisions, value=value, key=key, partition=partition, headers=headers
            )
        ]
        local = self.on_local is not None and req.reply_to == self._reply_to
        if not local and req.reply_partition >= 0:
            sent.append(
                await producer.send(
                    self.replies,
                    value=value,
                    key=key,
                    partition=req.reply_partition,
                    headers=headers,
                )
            )
        return sent

    async def _send_job(
        self, producer: AIOKafkaProducer, req: AdmissionRequest
    ) -> list[asyncio.Future[object]]:
        key = req.job_id.encode()
        # The fact first, then the command a streamer acts on, as the single publisher did.
        accepted: asyncio.Future[object] = await producer.send(
            events_topic(self.prefix),
            value=encode_record(req.accepted),
            key=key,
            headers=_headers("job.accepted", req.trace_id),
        )
        run: asyncio.Future[object] = await producer.send(
            job_topic(req.priority, self.prefix),
            value=encode_record(req.run),
            key=key,
            headers=_headers("job.run", req.trace_id),
        )
        return [accepted, run]

    def _take_back(self, decided: list[tuple[AdmissionRequest, Decision]]) -> None:
        for _, decision in reversed(decided):
            undo(self.view, decision)

    async def _abort(self, producer: AIOKafkaProducer) -> None:
        try:
            await producer.abort_transaction()
        except KafkaError as exc:
            log.warning("abort of an admission transaction failed: %s", exc)
