"""Kafka helpers: client security options, topic creation, a producer tuned for our records,
record headers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError, for_code
from aiokafka.helpers import create_ssl_context
from aiokafka.structs import RecordMetadata

from shared.contracts import Envelope
from shared.settings import CommonSettings, KafkaSecuritySettings, TopicReplicationSettings
from shared.topics import (
    HEADER_SCHEMA_VERSION,
    HEADER_TRACEPARENT,
    HEADER_TYPE,
    all_topics,
    instances_topic,
    job_topics,
    retry_topic,
    webhook_defaults_topic,
)

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]
KafkaOptions = Mapping[str, Any]
T = TypeVar("T")
# Job records carry the broker's append time: a streamer judges a RunJob's `accept_by`
# by the broker's clock (ConsumerRecord.timestamp_type 1), not by the producer's.
JOB_TOPIC_CONFIGS = {"message.timestamp.type": "LogAppendTime"}


class TopicsUnavailable(RuntimeError):
    """Topics are missing and could not be created (under ACLs: this principal may not)."""

    retriable = False

    def __init__(self, refused: Mapping[str, str]) -> None:
        self.refused = dict(refused)
        super().__init__(
            "streamjobs topics missing and not created: "
            + ", ".join(f"{t} ({err})" for t, err in sorted(self.refused.items()))
            + "; create them as an administrator, or let this principal describe them"
        )


def client_options(settings: KafkaSecuritySettings) -> dict[str, Any]:
    """The aiokafka keyword arguments that authenticate (and encrypt) a client as `settings` say.

    Every producer, consumer and admin client a service builds takes these, so a service runs
    as its own Kafka principal; PLAINTEXT gives no arguments at all.
    """
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(cafile=settings.kafka_ssl_cafile or None)
    if protocol.startswith("SASL_"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options


def traceparent(trace_id: str) -> bytes:
    """A W3C traceparent header value; the span id is derived, the trace id carried."""
    return f"00-{trace_id}-{trace_id[:16]}-01".encode()


def trace_id_from_headers(headers: Headers | None) -> str | None:
    for key, value in headers or ():
        if key == HEADER_TRACEPARENT:
            parts = value.decode(errors="replace").split("-")
            if len(parts) == 4:
                return parts[1]
    return None


def headers_for(envelope: Envelope) -> Headers:
    return [
        (HEADER_TYPE, envelope.type.encode()),
        (HEADER_SCHEMA_VERSION, str(envelope.schema_version).encode()),
        (HEADER_TRACEPARENT, traceparent(envelope.trace_id)),
    ]


# Latency tuning of the record hop, producer send to consumer poll (the chunk and event
# topics: the notifier adds ~1 ms over it). A producer sends at once: aiokafka keeps one
# request in flight per broker, so records sent meanwhile still leave together, and load
# batches them without a linger adding to every record's hop. A consumer's fetch stays parked
# at the broker, which answers it as soon as one byte is appended: a long wait costs no
# latency, and spares the idle fetches a short one makes (and a record arriving between them).
DEFAULT_LINGER_MS = 0
DEFAULT_FETCH_MAX_WAIT_MS = 100
DEFAULT_FETCH_MIN_BYTES = 1

# Per partition: aiokafka buffers one batch, and once it is full every later send waits for
# its drain (one request in flight per broker). At 16 KiB, its default, 400 streams' chunks
# filled it faster than a loaded broker answered, and the streams slowed to the producer's
# pace; the broker takes up to 1 MiB per batch.
DEFAULT_MAX_BATCH_BYTES = 512 * 1024


def make_producer(
    bootstrap_servers: str,
    *,
    linger_ms: int = DEFAULT_LINGER_MS,
    client_id: str = "",
    security: KafkaOptions | None = None,
) -> AIOKafkaProducer:
    """A producer that does not lose or duplicate records on broker retries."""
    return AIOKafkaProducer(
        **(security or {}),
        bootstrap_servers=bootstrap_servers,
        client_id=client_id or "streamjobs",
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        max_batch_size=DEFAULT_MAX_BATCH_BYTES,
        request_timeout_ms=15_000,
    )


def _keyed(envelope: Envelope) -> dict[str, Any]:
    """A record's value, key (its job id) and headers, as a producer's send takes them."""
    return {
        "value": envelope.to_bytes(),
        "key": envelope.job_id.encode(),
        "headers": headers_for(envelope),
    }


async def publish(producer: AIOKafkaProducer, topic: str, envelope: Envelope) -> None:
    """Publish one record keyed by job id and wait until the broker has it."""
    await producer.send_and_wait(topic, **_keyed(envelope))


async def enqueue(
    producer: AIOKafkaProducer, topic: str, envelope: Envelope
) -> asyncio.Future[RecordMetadata]:
    """Hand one record keyed by job id to the producer without waiting for the broker: the
    future is done once the broker has it, or fails as `publish` would raise."""
    sent: asyncio.Future[RecordMetadata] = await producer.send(topic, **_keyed(envelope))
    return sent


@dataclass(frozen=True)
class TopicSpec:
    """How one topic is created: its partitions and its own configs (replication apart)."""

    partitions: int
    configs: Mapping[str, str] = field(default_factory=dict)


async def create_missing_topics(
    admin: AIOKafkaAdminClient,
    topics: Mapping[str, TopicSpec],
    replication: TopicReplicationSettings,
) -> list[str]:
    """Create those of `topics` that do not exist yet; returns the names created.

    Every topic gets `replication`'s replicas and `min.insync.replicas`. Under ACLs a
    service sees the topics it may describe; where they all exist already (an operator
    created them) nothing is created, so services need no Create permission.
    """
    existing = set(await admin.list_topics())
    missing = [t for t in topics if t not in existing]
    if not missing:
        return []
    durability = {"min.insync.replicas": str(replication.kafka_min_insync_replicas)}
    with contextlib.suppress(TopicAlreadyExistsError):  # another service may be first
        response = await admin.create_topics(
            [
                NewTopic(
                    t,
                    num_partitions=topics[t].partitions,
                    replication_factor=replication.kafka_replication_factor,
                    topic_configs={**durability, **topics[t].configs},
                )
                for t in missing
            ]
        )
        raise_refused(response)
    log.info("created topics %s", missing)
    return missing


# The latest heartbeat of each streamer is all that matters: compacted, one partition.
INSTANCES_TOPIC_SPEC = TopicSpec(1, {"cleanup.policy": "compact"})


def streamjobs_topics(prefix: str, partitions: int) -> dict[str, TopicSpec]:
    """The job, retry, control, event, chunk, dead-letter and webhook topics, one partition
    count; and the compacted instances and webhook-defaults topics."""
    job_records = {*job_topics(prefix), retry_topic(prefix)}
    return {
        **{
            t: TopicSpec(partitions, JOB_TOPIC_CONFIGS if t in job_records else {})
            for t in all_topics(prefix)
        },
        instances_topic(prefix): INSTANCES_TOPIC_SPEC,
        # Each user's default webhook URL: few records, every gateway reads them all.
        webhook_defaults_topic(prefix): TopicSpec(1, {"cleanup.policy": "compact"}),
    }


async def ensure_topics(
    bootstrap_servers: str,
    prefix: str,
    partitions: int,
    *,
    timeout_s: float = 30.0,
    security: KafkaOptions | None = None,
    replication: TopicReplicationSettings | None = None,
) -> None:
    """Create every streamjobs topic that is missing (same partition count each)."""
    await ensure_created(
        bootstrap_servers,
        streamjobs_topics(prefix, partitions),
        timeout_s=timeout_s,
        security=security,
        replication=replication,
    )


async def ensure_service_topics(
    settings: CommonSettings, extra: Mapping[str, TopicSpec] | None = None
) -> None:
    """A service's start-up check: the streamjobs topics (and `extra`), created where
    missing with the service's own partitions, replication and Kafka credentials."""
    await ensure_created(
        settings.kafka_bootstrap_servers,
        {**streamjobs_topics(settings.topic_prefix, settings.job_partitions), **(extra or {})},
        security=client_options(settings),
        replication=settings,
    )


async def ensure_created(
    bootstrap_servers: str,
    topics: Mapping[str, TopicSpec],
    *,
    timeout_s: float = 30.0,
    security: KafkaOptions | None = None,
    replication: TopicReplicationSettings | None = None,
) -> None:
    """`create_missing_topics` with an admin client of its own.

    Replicas and `min.insync.replicas` come from `replication` (a service passes its own
    settings), by default from the environment: every service calls this at start-up, so
    whichever creates a topic first gives it the cluster's values.
    """
    replicas = replication or TopicReplicationSettings()

    async def create(admin: AIOKafkaAdminClient, _deadline: float) -> None:
        await create_missing_topics(admin, topics, replicas)

    await with_admin(bootstrap_servers, create, timeout_s=timeout_s, security=security)


async def with_admin(
    bootstrap_servers: str,
    work: Callable[[AIOKafkaAdminClient, float], Awaitable[T]],
    *,
    timeout_s: float,
    security: KafkaOptions | None = None,
) -> T:
    """Run `work(admin, deadline)` with a fresh admin client, again while the broker is
    unreachable, until `timeout_s` (the loop-time deadline `work` may wait up to) has passed."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(**(security or {}), bootstrap_servers=bootstrap_servers)
        try:
            await admin.start()
            return await work(admin, deadline)
        except KafkaConnectionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)
        finally:
            await admin.close()


def raise_refused(response: Any) -> None:
    """Raise `TopicsUnavailable` for the topics a CreateTopics answer refused.

    The broker answers per topic (under ACLs: not authorised), and aiokafka does not raise.
    """
    refused = {
        topic: for_code(code).__name__
        for topic, code, *_ in response.topic_errors
        if code not in (0, TopicAlreadyExistsError.errno)
    }
    if refused:
        raise TopicsUnavailable(refused)


async def assign_every_partition(
    consumer: AIOKafkaConsumer, topics: list[str], *, timeout_s: float = 30.0
) -> list[TopicPartition]:
    """Assign a started group-less consumer every partition of `topics`, by hand.

    The partitions are learnt through a short subscription, which is then dropped:
    a group-less subscription is re-assigned on any metadata change (a new leader),
    and that resets every position to the reset policy, skipping or replaying records.
    """
    consumer.subscribe(topics)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while {tp.topic for tp in consumer.assignment()} != set(topics):
        if loop.time() > deadline:
            raise TimeoutError(f"no partitions of {topics} after {timeout_s:g} s")
        await asyncio.sleep(0.05)
    tps = sorted(consumer.assignment())
    consumer.unsubscribe()
    consumer.assign(tps)
    return tps
