"""The single writer of admission decisions: this gateway's share of the admission topic.

Every gateway joins one consumer group on `{prefix}.admissions` (keyed by user id), so each
partition, and with it each user, has one owner at a time. Per owned partition the owner
holds transactional producers whose ids name the partition: starting them fences whoever
owned the partition before (their open transaction is aborted, their later writes refused).
It then replays the partition's recent decisions into the events view, so it counts every
job a previous owner accepted before the view has read its fact, and only then decides.

Fetching never waits for deciding: the consumer loop hands each partition's requests to its
lane (admission_lane.py), and each lane decides what waits in it in ONE transaction with
the accepted facts, the job commands and the consumer offset (group commit): all of it is
visible, or none of it, and a request is decided again only if its decision never
committed. Partitions commit independently of each other, so a slow one holds up no other.

A request this gateway asked itself is answered in-process once its transaction has
committed (`on_local`), rather than through a record read back: the same answer, a fetch
sooner. Another gateway's answer is a copy of the decision on that gateway's partition of
the replies topic, in the same transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from enum import Enum
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError, ProducerFenced
from aiokafka.partitioner import DefaultPartitioner

from services.gateway.admission_lane import Direct, Item, Lane, Record
from services.gateway.admission_records import (
    HEADER_REPLY_TO,
    PRODUCERS_PER_PARTITION,
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
from shared.kafka import DEFAULT_MAX_BATCH_BYTES, Headers, KafkaOptions, traceparent
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
# aiokafka's default (100 ms) is what a coordinator answering "busy" costs a transaction;
# the coordinator is busy for a few ms (a commit's markers being written).
RETRY_BACKOFF_MS = 10
# A lane with this many batches waiting has its partition's fetching paused until it drains.
MAX_WAITING_BATCHES = 4
# How often a lane looks whether `paused` was cleared; how long it waits before deciding
# again after a transaction failed on a Kafka error.
PAUSED_POLL_S = 0.05
RETRY_AFTER_ERROR_S = 0.1
# At stop, how long requests handed on to the admission topic may still take.
APPEND_TIMEOUT_S = 5.0


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
        max_batch_size=DEFAULT_MAX_BATCH_BYTES,  # a whole poll's records at once
        retry_backoff_ms=RETRY_BACKOFF_MS,
    )


# A decision on a request this instance sent, committed: its requester is in this process.
LocalReply = Callable[[Decision], None]
# Appends a request to the admission topic: one handed over in-process whose partition left.
AppendRequest = Callable[[AdmissionRequest], Coroutine[Any, Any, None]]


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


class _Written(Enum):
    """How one transaction of a lane ended."""

    COMMITTED = "committed"
    AGAIN = "again"  # aborted: decide the same requests again now
    AGAIN_LATER = "again-later"  # aborted on a Kafka error: again, after a pause
    FENCED = "fenced"  # the producers are another owner's now, or unusable: take anew


class _Ownership(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: AdmissionOwner) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.owner.release(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.owner.take(assigned)


async def _stop_all(producers: Iterable[AIOKafkaProducer]) -> None:
    for producer in producers:
        await producer.stop()


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
        max_transactions: int = 0,
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
        self._lanes: dict[int, Lane] = {}  # the partitions decided here
        # Producers of revoked partitions, maybe given straight back.
        self._revoked: dict[int, tuple[AIOKafkaProducer, ...]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._rebuilder: AIOKafkaConsumer | None = None
        self._ownership = asyncio.Lock()  # takes, releases and re-takes, one at a time
        # Transactions open at once over every lane: past it a lane waits, and what waits in
        # it joins its next transaction. A transaction costs the broker far more than one
        # request more in it, so under load fewer, fuller transactions decide more per second.
        self._transactions = asyncio.Semaphore(max_transactions or 1 << 30)
        self.paused = asyncio.Event()  # set: decide nothing (operations and tests)
        self.joined = asyncio.Event()  # set at the first assignment, an empty one too
        self.on_local: LocalReply | None = None
        self.append: AppendRequest | None = None
        self._appending: set[asyncio.Task[None]] = set()
        self._partitioner = DefaultPartitioner()
        self._reply_to = instance

    @property
    def owned(self) -> list[int]:
        return sorted(self._lanes)

    def offer(self, request: AdmissionRequest) -> bool:
        """Take a request of this gateway's own when its user's partition is decided here
        (it is then not appended to the admission topic); False: append it."""
        consumer = self._consumer
        partitions = consumer.partitions_for_topic(self.topic) if consumer is not None else None
        if not partitions:
            return False
        # Where the request producer's partitioner would have put it.
        partition = self._partitioner(request.user_id.encode(), sorted(partitions), [])
        lane = self._lanes.get(partition)
        if lane is None:
            return False
        lane.offer(Direct(request, time.time()))
        return True

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
        for producers in self._revoked.values():
            await _stop_all(producers)
        self._revoked.clear()
        if self._appending:
            await asyncio.wait(set(self._appending), timeout=APPEND_TIMEOUT_S)
        if self._rebuilder is not None:
            await self._rebuilder.stop()
            self._rebuilder = None

    async def loop(self) -> None:
        """Fetch, and hand each partition's requests to its lane: never waits for a commit."""
        assert self._consumer is not None, "start() first"
        consumer = self._consumer
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=200, max_records=self.batch)
                self._check_lanes()
                unowned = False
                for tp, records in batches.items():
                    lane = self._lanes.get(tp.partition)
                    if lane is None:
                        # Assigned, and being taken again after a fence: read it again.
                        consumer.seek(tp, records[0].offset)
                        unowned = True
                        continue
                    lane.add(records)
                    if len(lane) >= self.batch * MAX_WAITING_BATCHES:
                        consumer.pause(tp)  # resumed as the lane drains
                if unowned:
                    await asyncio.sleep(PAUSED_POLL_S)
        finally:
            # A lane decides only what this loop fetched for it: it ends with the loop.
            for lane in self._lanes.values():
                if lane.task is not None:
                    lane.task.cancel()

    def _check_lanes(self) -> None:
        """A lane that crashed takes the loop with it (the service is then not ready)."""
        for lane in self._lanes.values():
            task = lane.task
            if task is not None and task.done() and not task.cancelled():
                exc = task.exception()
                if exc is not None:
                    raise exc

    # -- ownership -------------------------------------------------------------------------

    async def take(self, assigned: Iterable[TopicPartition]) -> None:
        wanted = {tp.partition for tp in assigned}
        async with self._ownership:
            for partition in sorted(set(self._revoked) - wanted):
                await _stop_all(self._revoked.pop(partition))
            await self._adopt(sorted(wanted - set(self._lanes)))
        self.joined.set()

    async def _adopt(self, partitions: Sequence[int]) -> None:
        """Decide on `partitions` from here. One revoked and given straight back was ours all
        along: its producers and state stand (had another owner had it between, its
        producers fenced ours, and the next commit says so). The others are fenced from
        their previous owner and rebuilt."""
        kept = {p: self._revoked.pop(p) for p in partitions if p in self._revoked}
        fresh = [p for p in partitions if p not in kept]
        fenced = await asyncio.gather(*(self._fence(p) for p in fresh))
        await self._rebuild(fresh)
        for partition, producers in [*kept.items(), *zip(fresh, fenced, strict=True)]:
            lane = Lane(partition, producers)
            lane.task = asyncio.create_task(self._run(lane), name=f"admission-lane-{partition}")
            self._lanes[partition] = lane
        self.metrics.admission_partitions.set(len(self._lanes))
        if fresh:
            log.info("admission partitions %s owned by %s", fresh, self.instance)

    async def _fence(self, partition: int) -> tuple[AIOKafkaProducer, ...]:
        # No linger: a transaction's records are all appended before the sender runs, and
        # the commit waits for them; lingering would only delay the commit.
        producers = tuple(
            admission_producer(
                self.bootstrap,
                client_id=f"gateway-admission-{self.instance}-{partition}-{lane}",
                transactional_id=transactional_id(self.prefix, partition, lane),
                linger_ms=0,
                security=self.security,
            )
            for lane in range(PRODUCERS_PER_PARTITION)
        )
        # InitProducerId: the previous owner is fenced from here on.
        await asyncio.gather(*(producer.start() for producer in producers))
        return producers

    async def release(self, revoked: Iterable[TopicPartition]) -> None:
        """Decide nothing more on `revoked`, once the transaction under way has ended; their
        producers wait for the next assignment, their waiting requests are dropped (the
        next owner reads them from the committed offset)."""
        async with self._ownership:
            for tp in revoked:
                lane = self._lanes.pop(tp.partition, None)
                if lane is None:
                    continue
                async with lane.writing:
                    if lane.task is not None:
                        lane.task.cancel()
                if lane.task is not None:
                    await asyncio.wait([lane.task])
                self._hand_on(lane.drop()[0])
                self._revoked[tp.partition] = lane.producers
        self.metrics.admission_partitions.set(len(self._lanes))

    def _hand_on(self, directs: list[Direct]) -> None:
        """Append requests handed over in-process to a partition no longer decided here: its
        next owner decides them (their requester still waits)."""
        append = self.append
        for direct in directs:
            if append is None:
                break
            task = asyncio.create_task(append(direct.request))
            self._appending.add(task)
            task.add_done_callback(self._appended)

    def _appended(self, task: asyncio.Task[None]) -> None:
        self._appending.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Its requester answers 503 when no decision comes.
            log.warning("admission request not handed on: %s: %s", type(exc).__name__, exc)

    async def _take_again(self, lane: Lane) -> None:
        """After a fence: still assigned here, the partition is fenced and rebuilt again and
        decided from its first undecided request; if it is another gateway's now, the group
        revokes it here at the next heartbeat."""
        tp = TopicPartition(self.topic, lane.partition)
        async with self._ownership:
            if self._lanes.get(lane.partition) is not lane:
                return  # released meanwhile
            del self._lanes[lane.partition]
            directs, first_offset = lane.drop()
            consumer = self._consumer
            assigned = consumer is not None and tp in consumer.assignment()
            if consumer is not None and assigned:
                if first_offset is not None:
                    consumer.seek(tp, first_offset)
                consumer.resume(tp)
            self._hand_on(directs)
            await _stop_all(lane.producers)
            if assigned:
                await self._adopt([lane.partition])
            self.metrics.admission_partitions.set(len(self._lanes))

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

    def _replay(self, record: Record) -> int:
        try:
            decision = Decision.from_bytes(record.value or b"")
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable decision at %s offset %d", record.partition, record.offset)
            return 0
        apply_decision(self.view, decision)
        return 1

    # -- deciding --------------------------------------------------------------------------

    async def _run(self, lane: Lane) -> None:
        """Decide what waits in `lane`, one transaction after another, each taking all that
        arrived during the one before (up to a batch)."""
        tp = TopicPartition(self.topic, lane.partition)
        while True:
            await lane.arrived.wait()
            if self.paused.is_set():
                await asyncio.sleep(PAUSED_POLL_S)
                continue
            async with self._transactions:
                # Taken once a transaction may begin: what arrived while waiting joins it.
                items = lane.take(self.batch)
                consumer = self._consumer
                if consumer is not None and len(lane) < self.batch and tp in consumer.paused():
                    consumer.resume(tp)
                async with lane.writing:
                    written = await self._decide(lane, tp, items)
                    if written is not _Written.COMMITTED:
                        lane.put_back(items)  # before a revocation can empty the lane
            if written is _Written.FENCED:
                await self._take_again(lane)
                return
            if written is _Written.AGAIN_LATER:
                await asyncio.sleep(RETRY_AFTER_ERROR_S)

    async def _decide(self, lane: Lane, tp: TopicPartition, items: list[Item]) -> _Written:
        producer = lane.producer()
        now = time.time()
        decided: list[tuple[AdmissionRequest, Decision]] = []
        last: Record | None = None  # the last fetched request: its offset commits
        for item in items:
            if isinstance(item, Direct):
                request, appended_at = item.request, item.arrived_at
            else:
                last = item
                try:
                    request = AdmissionRequest.from_bytes(item.value or b"")
                except (ValueError, KeyError, TypeError):
                    self.metrics.admission_decisions.labels("unreadable").inc()
                    log.warning("unreadable admission request at %s offset %d", tp, item.offset)
                    continue
                appended_at = item.timestamp / 1000
            decision = decide(self.view, request, now=now, appended_at=appended_at)
            decided.append((request, decision))
        try:
            await producer.begin_transaction()
            sent = []
            for request, decision in decided:
                sent.extend(await self._send_decision(producer, tp.partition, request, decision))
                if decision.outcome is Outcome.ACCEPTED:
                    sent.extend(await self._send_job(producer, request))
            if last is not None:
                await producer.send_offsets_to_transaction({tp: last.offset + 1}, self.group)
            await asyncio.gather(*sent)
            await _commit_in_time(producer, decided)
        except ProducerFenced:
            # Another producer took the partition's id: nothing of this committed.
            self._take_back(decided)
            log.warning("admission partition %d fenced: taking it again", tp.partition)
            return _Written.FENCED
        except (KafkaError, _Overdue) as exc:
            self._take_back(decided)
            log.warning("admission transaction on %s failed, deciding again: %s", tp, exc)
            if not await self._abort(producer):
                return _Written.FENCED  # a producer that cannot abort is replaced
            return _Written.AGAIN if isinstance(exc, _Overdue) else _Written.AGAIN_LATER
        done = time.time()
        self.metrics.admission_transaction_requests.observe(len(items))
        local = self.on_local
        for request, decision in decided:
            self.metrics.admission_decisions.labels(decision.outcome.value).inc()
            self.metrics.admission_latency.observe(max(0.0, done - request.submitted_at))
            if local is not None and request.reply_to == self._reply_to:
                local(decision)
        return _Written.COMMITTED

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

    async def _abort(self, producer: AIOKafkaProducer) -> bool:
        try:
            await producer.abort_transaction()
        except KafkaError as exc:
            log.warning("abort of an admission transaction failed: %s", exc)
            return False
        return True
