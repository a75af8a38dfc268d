"""The webhook planner: reads the lifecycle events in a consumer group of its own; remembers
each accepted job's webhook URL in PostgreSQL and turns the final event (completed, failed,
cancelled) of such a job into a delivery record on the webhooks topic.

One job's events share a partition, so its accepted fact is read before its final one. The
offsets are committed only after the batch's URLs are stored and its deliveries are acked
by the broker: a crash replays the batch, which produces the same webhook ids again (the
deliverer and the receiver deduplicate by them). Nothing of the persister's path changes.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from services.results import webhook_store as store
from services.results.faults import CONNECTION_ERRORS
from services.results.metrics import ResultsMetrics
from shared.contracts import WebhookDelivery, WebhookDeliveryData
from shared.kafka import publish
from shared.retry import retry_until_done
from shared.topics import webhooks_topic
from shared.webhooks import webhook_id

log = logging.getLogger(__name__)

FINAL_TYPES = frozenset({"job.completed", "job.failed", "job.cancelled"})
_WANTED = frozenset({b"job.accepted", *(t.encode() for t in FINAL_TYPES)})
_TYPE_HEAD = b'{"type":"'  # our producers write `type` first, with no spaces
_URL_SET = b'"webhook_url":"'


def _type_of(value: bytes) -> bytes | None:
    """The record's type read off its head, or None when it is not where we write it."""
    if not value.startswith(_TYPE_HEAD):
        return None
    end = value.find(b'"', len(_TYPE_HEAD))
    return value[len(_TYPE_HEAD) : end] if end > 0 else None


@dataclass(frozen=True, slots=True)
class Final:
    job_id: str
    event_type: str
    payload: str
    trace_id: str | None


def read_event(value: bytes | None) -> tuple[str, str, str] | Final | None:
    """(job_id, user_id, url) of an accepted job that names a webhook, a final event, or
    None for anything else (including what cannot be read: the persister dead-letters it)."""
    if not value:
        return None
    kind = _type_of(value)
    if kind is not None and (
        kind not in _WANTED or (kind == b"job.accepted" and _URL_SET not in value)
    ):
        return None  # most events: no parse at all
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("job_id"), str):
        return None
    kind, job_id, data = record.get("type"), record["job_id"], record.get("data")
    if not isinstance(data, dict):
        return None
    if kind == "job.accepted":
        url, user_id = data.get("webhook_url"), data.get("user_id")
        if isinstance(url, str) and url and isinstance(user_id, str):
            return (job_id, user_id, url)
        return None
    if kind in FINAL_TYPES:
        trace = record.get("trace_id")
        return Final(job_id, kind, value.decode(), trace if isinstance(trace, str) else None)
    return None


class WebhookPlanner:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        pool: asyncpg.Pool,
        metrics: ResultsMetrics,
        *,
        topic_prefix: str,
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self.pool = pool
        self.metrics = metrics
        self.topic = webhooks_topic(topic_prefix)

    async def run(self) -> None:
        while True:
            fetched = await self.consumer.getmany(timeout_ms=1000, max_records=1000)
            if not fetched:
                continue
            accepted: list[tuple[str, str, str]] = []
            finals: list[Final] = []
            offsets: dict[TopicPartition, int] = {}
            for tp, records in fetched.items():
                for record in records:
                    read = read_event(record.value)
                    if isinstance(read, Final):
                        finals.append(read)
                    elif read is not None:
                        accepted.append(read)
                if records:
                    offsets[tp] = records[-1].offset + 1
            if accepted or finals:
                await self._plan(accepted, finals)
            await self._commit(offsets)

    async def _plan(self, accepted: list[tuple[str, str, str]], finals: list[Final]) -> None:
        async def store_and_look_up() -> dict[str, tuple[str, str]]:
            async with self.pool.acquire() as conn:
                if accepted:
                    await store.remember_urls(conn, accepted)
                return await store.urls_of(conn, sorted({f.job_id for f in finals}))

        urls = await retry_until_done(
            store_and_look_up, CONNECTION_ERRORS, what="webhook URL write", max_delay_s=5.0
        )
        deliveries = [
            WebhookDelivery(
                job_id=final.job_id,
                **({"trace_id": final.trace_id} if final.trace_id else {}),
                data=WebhookDeliveryData(
                    webhook_id=webhook_id(final.job_id, final.event_type),
                    user_id=urls[final.job_id][0],
                    url=urls[final.job_id][1],
                    event_type=final.event_type,
                    payload=final.payload,
                ),
            )
            for final in finals
            if final.job_id in urls
        ]
        if not deliveries:
            return

        async def produce() -> None:
            await asyncio.gather(*(publish(self.producer, self.topic, d) for d in deliveries))

        await retry_until_done(produce, (KafkaError,), what="webhook delivery publish")
        self.metrics.webhooks_planned.inc(len(deliveries))

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        mine = {tp: o for tp, o in offsets.items() if tp in self.consumer.assignment()}
        if not mine:
            return
        try:
            await self.consumer.commit(mine)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # Replayed after a rebalance: the same webhook ids, deduplicated downstream.
            log.warning("webhook planner commit failed: %s", exc)

    async def rewind(self) -> None:
        for tp in self.consumer.assignment():
            committed = await self.consumer.committed(tp)
            if committed is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, committed)
