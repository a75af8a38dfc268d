"""The webhook deliverer: POSTs each delivery record of the webhooks topics, signed, and on a
retriable failure hands the next try to the retry topic with its `not_before`.

A record is held (an asyncio task sleeping until it is due, as the streamer holds its
delayed retries) rather than blocking its partition, so a try due in 5 s never waits behind
one due in 10 h; past `max_pending` held records the partitions are paused. A partition's
offset is committed only up to its oldest record not yet delivered or handed on, so a kill
-9 loses nothing: what was held comes again, and PostgreSQL's record of the delivery (its
status and the last try handed on) keeps a replay from trying twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
import asyncpg
from aiohttp.abc import AbstractResolver, ResolveResult
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from pydantic import ValidationError

from services.results import webhook_store as store
from services.results.faults import CONNECTION_ERRORS
from services.results.metrics import ResultsMetrics
from shared.contracts import WebhookDelivery, WebhookDeliveryData
from shared.kafka import publish
from shared.retry import retry_until_done
from shared.webhooks import (
    Address,
    AllowList,
    Schedule,
    Unresolved,
    WebhookRefused,
    parse_url,
    resolve_checked,
    retriable_status,
    signed_headers,
)

log = logging.getLogger(__name__)

_MAX_ANSWER_BYTES = 64 * 1024  # what is read of a receiver's answer before it is dropped


class PinnedResolver(AbstractResolver):
    """Answers with the addresses already checked: the connection goes where the check
    looked, whatever the name resolves to a moment later (DNS rebinding)."""

    def __init__(self, addresses: list[Address]) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=str(a),
                port=port,
                family=socket.AF_INET6 if a.version == 6 else socket.AF_INET,
                proto=socket.IPPROTO_TCP,
                flags=socket.AI_NUMERICHOST,
            )
            for a in self.addresses
        ]

    async def close(self) -> None:
        return None


@dataclass(slots=True)
class Outcome:
    tried: store.Tried
    retriable: bool

    @property
    def delivered(self) -> bool:
        code = self.tried.status_code
        return code is not None and 200 <= code < 300


async def post_once(
    data: WebhookDeliveryData, secret: str, allow: AllowList, timeout_s: float
) -> Outcome:
    """One signed POST of `data`, no redirects followed; the address is checked first."""
    at = datetime.now(UTC)
    started = time.perf_counter()

    def done(code: int | None, error: str | None, retriable: bool) -> Outcome:
        ms = (time.perf_counter() - started) * 1000
        return Outcome(store.Tried(at, code, error, ms), retriable)

    body = data.payload.encode()
    try:
        target = parse_url(data.url)
        async with asyncio.timeout(timeout_s):
            addresses = await resolve_checked(target, allow)
    except WebhookRefused as exc:
        return done(None, f"refused: {exc.reason}", retriable=False)
    except Unresolved as exc:
        return done(None, str(exc), retriable=True)
    except TimeoutError:
        return done(None, f"no address for the host within {timeout_s:g}s", retriable=True)
    headers = signed_headers(secret, data.webhook_id, int(at.timestamp()), body)
    headers["User-Agent"] = "streamjobs-webhooks/1"
    connector = aiohttp.TCPConnector(resolver=PinnedResolver(addresses), force_close=True)
    try:
        async with (
            aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as http,
            http.post(data.url, data=body, headers=headers, allow_redirects=False) as resp,
        ):
            await resp.content.read(_MAX_ANSWER_BYTES)
            code = resp.status
    except TimeoutError:
        return done(None, f"no answer within {timeout_s:g}s", retriable=True)
    except (aiohttp.ClientError, OSError) as exc:
        return done(None, f"{type(exc).__name__}: {exc}", retriable=True)
    if 200 <= code < 300:
        return done(code, None, retriable=False)
    return done(code, f"answered {code}", retriable=retriable_status(code))


@dataclass
class _Partition:
    held: set[int] = field(default_factory=set)
    next_offset: int | None = None

    def commit_point(self) -> int | None:
        return min(self.held) if self.held else self.next_offset


class WebhookDeliverer(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        pool: asyncpg.Pool,
        metrics: ResultsMetrics,
        *,
        secret_of: Callable[[str], str],
        allow: AllowList,
        schedule: Schedule,
        timeout_s: float,
        retry_topic: str,
        max_pending: int,
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self.pool = pool
        self.metrics = metrics
        self.secret_of = secret_of
        self.allow = allow
        self.schedule = schedule
        self.timeout_s = timeout_s
        self.retry_topic = retry_topic
        self.max_pending = max_pending
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._tasks: dict[tuple[TopicPartition, int], asyncio.Task[None]] = {}
        self._first_tries: dict[tuple[TopicPartition, int], datetime] = {}
        self._paused = False

    # -- the consumer loop ------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                self._pace()
                fetched = await self.consumer.getmany(timeout_ms=500, max_records=200)
                for tp, records in fetched.items():
                    for record in records:
                        self._hold(tp, record)
                await self._commit()
        finally:
            await self._cancel(list(self._tasks))

    async def rewind(self) -> None:
        """After a crash of the loop: what it held comes again from the committed offsets."""
        self._partitions.clear()
        for tp in self.consumer.assignment():
            committed = await self.consumer.committed(tp)
            if committed is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, committed)

    def oldest_pending_s(self) -> float:
        """Age of the oldest delivery held here that has not succeeded or failed for good."""
        if not self._first_tries:
            return 0.0
        oldest = min(self._first_tries.values())
        return max(0.0, (datetime.now(UTC) - oldest).total_seconds())

    def _pace(self) -> None:
        if len(self._tasks) >= self.max_pending and not self._paused:
            self.consumer.pause(*self.consumer.assignment())
            self._paused = True
        elif len(self._tasks) < self.max_pending and self._paused:
            self.consumer.resume(*self.consumer.assignment())
            self._paused = False

    def _hold(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        part = self._partitions.setdefault(tp, _Partition())
        part.next_offset = record.offset + 1
        try:
            delivery = WebhookDelivery.model_validate_json(record.value or b"")
        except ValidationError as exc:
            log.warning("unreadable webhook record %s@%d skipped: %s", tp, record.offset, exc)
            self.metrics.webhook_deliveries.labels("unreadable").inc()
            return
        key = (tp, record.offset)
        part.held.add(record.offset)
        self._first_tries[key] = delivery.data.first_attempt_at or datetime.now(UTC)
        self._tasks[key] = asyncio.create_task(self._handle(key, delivery))

    async def _handle(self, key: tuple[TopicPartition, int], delivery: WebhookDelivery) -> None:
        data = delivery.data
        try:
            if data.not_before is not None:
                wait = (data.not_before - datetime.now(UTC)).total_seconds()
                if wait > 0:
                    await asyncio.sleep(wait)
            failures = 0
            while True:
                try:
                    await self.deliver(delivery)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception:  # a task's boundary: the record stays held and is retried
                    failures += 1
                    log.exception(
                        "webhook %s: delivery step failed; again shortly",
                        data.webhook_id,
                        extra={"job_id": delivery.job_id},
                    )
                    await asyncio.sleep(min(30.0, 0.5 * 2**failures))
            self._release(key)
        finally:
            self._tasks.pop(key, None)
            self._first_tries.pop(key, None)

    def _release(self, key: tuple[TopicPartition, int]) -> None:
        part = self._partitions.get(key[0])
        if part is not None:
            part.held.discard(key[1])

    async def _commit(self) -> None:
        assigned = self.consumer.assignment()
        offsets = {
            tp: point
            for tp, part in self._partitions.items()
            if tp in assigned and (point := part.commit_point()) is not None
        }
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            log.warning("webhook deliverer commit failed: %s", exc)

    async def _cancel(self, keys: list[tuple[TopicPartition, int]]) -> None:
        tasks = [t for k in keys if (t := self._tasks.get(k)) is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- rebalances: a partition taken away takes its held records with it ----------------

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        gone = set(revoked)
        await self._commit()
        await self._cancel([k for k in self._tasks if k[0] in gone])
        for tp in gone:
            self._partitions.pop(tp, None)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if self._paused:
            self.consumer.pause(*assigned)

    # -- one try ----------------------------------------------------------------------------

    async def deliver(self, delivery: WebhookDelivery) -> None:
        """Try `delivery` once, unless a replay finds it done or already handed on."""
        data = delivery.data
        first = data.first_attempt_at or datetime.now(UTC)

        async def opened() -> store.DeliveryState:
            async with self.pool.acquire() as conn:
                return await store.open_delivery(
                    conn,
                    webhook_id=data.webhook_id,
                    job_id=delivery.job_id,
                    user_id=data.user_id,
                    url=data.url,
                    event_type=data.event_type,
                    first_attempt_at=first,
                )

        state = await retry_until_done(opened, CONNECTION_ERRORS, what="webhook delivery read")
        first = state.first_attempt_at or first
        if state.status != store.PENDING or state.handed_on >= data.attempt:
            self.metrics.webhook_deliveries.labels("duplicate").inc()
            return
        if state.attempts >= data.attempt:
            # This try was made and stored, but its retry may not have reached the topic.
            async with self.pool.acquire() as conn:
                due = await store.next_attempt_of(conn, data.webhook_id, data.attempt)
            if due is not None:
                await self._hand_on(delivery, first, due)
            return
        outcome = await post_once(
            data, self.secret_of(data.user_id), self.allow, timeout_s=self.timeout_s
        )
        tried = outcome.tried
        due = (
            self.schedule.next_try(data.attempt, first, tried.attempted_at)
            if outcome.retriable
            else None
        )
        if outcome.delivered:
            status = store.DELIVERED
        elif due is not None:
            status = store.PENDING
        else:
            status = store.FAILED

        async def recorded() -> None:
            async with self.pool.acquire() as conn:
                await store.record_attempt(
                    conn, data.webhook_id, data.attempt, tried, status=status, next_attempt_at=due
                )

        await retry_until_done(recorded, CONNECTION_ERRORS, what="webhook attempt write")
        self._count(outcome, status)
        log.info(
            "webhook %s try %d: %s%s",
            data.webhook_id,
            data.attempt,
            tried.status_code or tried.error,
            f", next at {due.isoformat()}" if due else "",
            extra={"job_id": delivery.job_id, "trace_id": delivery.trace_id},
        )
        if due is not None:
            await self._hand_on(delivery, first, due)

    async def _hand_on(self, delivery: WebhookDelivery, first: datetime, due: datetime) -> None:
        data = delivery.data
        retry = delivery.model_copy(
            update={
                "data": data.model_copy(
                    update={
                        "attempt": data.attempt + 1,
                        "first_attempt_at": first,
                        "not_before": due,
                    }
                )
            }
        )
        await retry_until_done(
            lambda: publish(self.producer, self.retry_topic, retry),
            (KafkaError,),
            what="webhook retry publish",
        )

        async def marked() -> None:
            async with self.pool.acquire() as conn:
                await store.handed_on(conn, data.webhook_id, data.attempt)

        await retry_until_done(marked, CONNECTION_ERRORS, what="webhook hand-on write")

    def _count(self, outcome: Outcome, status: str) -> None:
        tried = outcome.tried
        if tried.status_code is not None:
            result = "2xx" if outcome.delivered else f"{tried.status_code // 100}xx"
        elif tried.error is not None and tried.error.startswith("refused"):
            result = "refused"
        else:
            result = "error"
        self.metrics.webhook_attempts.labels(result).inc()
        self.metrics.webhook_attempt_seconds.observe(tried.duration_ms / 1000)
        if status != store.PENDING:
            self.metrics.webhook_deliveries.labels(status).inc()
