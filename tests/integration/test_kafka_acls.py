"""Kafka as a trust boundary: a real broker requiring SASL/SCRAM-SHA-512, with the ACLs of
`deploy.localstack.acls`. Each service principal can do what its service must and is refused
the rest; a stranger cannot connect at all; real services work end to end over SASL."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)

from deploy.localstack.acls import (
    ADMIN_USER,
    DOCTOR_PRINCIPAL,
    SERVICE_PRINCIPALS,
    apply_acls,
    service_acls,
)
from deploy.localstack.kafka import KafkaNode
from deploy.localstack.procs import free_port
from services.gateway.admission_records import transactional_id
from services.gateway.admission_topics import admission_topics
from services.gateway.app import create_service as create_gateway
from services.gateway.settings import GatewaySettings
from shared.auth import issue_token
from shared.contracts import parse_record
from shared.kafka import (
    TopicsUnavailable,
    client_options,
    ensure_created,
    ensure_topics,
    make_producer,
    streamjobs_topics,
)
from shared.revocation import ensure_revocations_topic
from shared.settings import KafkaSecuritySettings
from shared.topics import (
    Priority,
    chunks_topic,
    control_topic,
    dlq_topic,
    events_topic,
    job_topic,
    retry_topic,
)
from tests.conftest import STATE
from tests.integration.results_kit import count, job_script, publish_script, running, settings_for
from tests.support import wait_for

pytestmark = [pytest.mark.kafka]

PREFIX = "acl"
STREAMER_GROUP = f"{PREFIX}-streamer"
RESULTS_GROUP = f"{PREFIX}-results"
# A principal with every grant of the gateway but its transactional ids.
UNTRANSACTED = "untransacted"
PASSWORDS = {
    name: uuid.uuid4().hex
    for name in (ADMIN_USER, *SERVICE_PRINCIPALS, DOCTOR_PRINCIPAL, UNTRANSACTED)
}


@pytest.fixture(scope="module")
def sasl_kafka(test_state_dir: Path) -> Iterator[KafkaNode]:
    """A broker of its own (the suite's is PLAINTEXT), with topics and ACLs made as the admin."""
    node = KafkaNode(
        test_state_dir / f"kafka-sasl-{uuid.uuid4().hex[:6]}",
        STATE / "cache",
        free_port(),
        free_port(),
        heap="384m",
        scram_users=PASSWORDS,
    )
    node.start()
    try:
        admin = node.admin_options()

        async def create() -> None:
            await ensure_topics(node.bootstrap_servers, PREFIX, 2, security=admin)
            await ensure_created(
                node.bootstrap_servers, admission_topics(PREFIX, 2), security=admin
            )
            await ensure_revocations_topic(node.bootstrap_servers, PREFIX, security=admin)

        asyncio.run(create())
        acls = service_acls(PREFIX, streamer_group=STREAMER_GROUP, results_group=RESULTS_GROUP)
        untransacted = [
            dataclasses.replace(acl, principal=UNTRANSACTED)
            for acl in acls
            if acl.principal == "gateway" and acl.resource != "transactional-id"
        ]
        apply_acls(node.bootstrap_servers, ADMIN_USER, node.admin_password, acls + untransacted)
        yield node
    finally:
        node.stop()


def as_user(name: str, password: str | None = None) -> dict[str, Any]:
    """aiokafka options of `name`, built the way every service builds them."""
    settings = KafkaSecuritySettings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username=name,
        kafka_sasl_password=password or PASSWORDS[name],
    )
    return client_options(settings)


def principal_settings(name: str) -> dict[str, Any]:
    return {
        "kafka_security_protocol": "SASL_PLAINTEXT",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": name,
        "kafka_sasl_password": PASSWORDS[name],
    }


async def send_as(kafka: KafkaNode, user: str, topic: str) -> None:
    producer = make_producer(kafka.bootstrap_servers, security=as_user(user))
    try:
        await producer.start()
        await asyncio.wait_for(producer.send_and_wait(topic, b"{}", key=b"job"), 20)
    finally:
        await producer.stop()


async def read_one_partition_as(kafka: KafkaNode, user: str, topic: str) -> None:
    """Fetch from partition 0 of `topic` as `user` (a group-less read, as the readers do)."""
    consumer = AIOKafkaConsumer(
        **as_user(user),
        bootstrap_servers=kafka.bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    try:
        await consumer.start()
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.getmany(timeout_ms=1000)
        await consumer.position(TopicPartition(topic, 0))
    finally:
        await consumer.stop()


ALLOWED_WRITES = [
    ("gateway", job_topic(Priority.URGENT, PREFIX)),
    ("gateway", job_topic(Priority.LOW, PREFIX)),
    ("gateway", control_topic(PREFIX)),
    ("gateway", events_topic(PREFIX)),
    ("streamer", chunks_topic(PREFIX)),
    ("streamer", retry_topic(PREFIX)),
    ("streamer", events_topic(PREFIX)),
    ("streamer", dlq_topic(PREFIX)),
    ("results", dlq_topic(PREFIX)),
]
REFUSED_WRITES = [
    ("notifier", chunks_topic(PREFIX)),
    ("notifier", events_topic(PREFIX)),
    ("gateway", chunks_topic(PREFIX)),
    ("gateway", retry_topic(PREFIX)),
    ("streamer", job_topic(Priority.HIGH, PREFIX)),
    ("streamer", control_topic(PREFIX)),
    ("results", events_topic(PREFIX)),
    ("results", chunks_topic(PREFIX)),
    ("doctor", events_topic(PREFIX)),
]


@pytest.mark.parametrize(("user", "topic"), ALLOWED_WRITES)
async def test_each_service_may_write_the_topics_its_service_writes(
    sasl_kafka: KafkaNode, user: str, topic: str
) -> None:
    await send_as(sasl_kafka, user, topic)


@pytest.mark.parametrize(("user", "topic"), REFUSED_WRITES)
async def test_a_service_is_refused_writing_another_services_topic(
    sasl_kafka: KafkaNode, user: str, topic: str
) -> None:
    # A principal that may write no topic at all (notifier, doctor) is refused a producer id
    # already (idempotent producers need Write somewhere); the others at the topic itself.
    with pytest.raises((TopicAuthorizationFailedError, ClusterAuthorizationFailedError)):
        await send_as(sasl_kafka, user, topic)


@pytest.mark.parametrize(
    ("user", "topic"),
    [
        ("notifier", job_topic(Priority.NORMAL, PREFIX)),
        ("notifier", control_topic(PREFIX)),
        ("results", job_topic(Priority.NORMAL, PREFIX)),
        ("gateway", chunks_topic(PREFIX)),
        ("doctor", chunks_topic(PREFIX)),
    ],
)
async def test_a_service_is_refused_reading_what_it_does_not_consume(
    sasl_kafka: KafkaNode, user: str, topic: str
) -> None:
    with pytest.raises(TopicAuthorizationFailedError):
        await read_one_partition_as(sasl_kafka, user, topic)


@pytest.mark.parametrize(
    ("user", "topic"),
    [
        ("notifier", chunks_topic(PREFIX)),
        ("results", events_topic(PREFIX)),
        ("streamer", control_topic(PREFIX)),
        ("gateway", events_topic(PREFIX)),
    ],
)
async def test_a_service_may_read_what_it_consumes(
    sasl_kafka: KafkaNode, user: str, topic: str
) -> None:
    await read_one_partition_as(sasl_kafka, user, topic)


async def join_group(kafka: KafkaNode, user: str, group: str, topic: str) -> None:
    consumer = AIOKafkaConsumer(
        topic,
        **as_user(user),
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )
    try:
        await consumer.start()
        await asyncio.wait_for(consumer.getmany(timeout_ms=500), 20)
        await wait_for(lambda: consumer.assignment(), message=f"{user} joined {group}")
    finally:
        await consumer.stop()


async def test_only_results_joins_the_results_group_and_only_streamers_the_streamer_groups(
    sasl_kafka: KafkaNode,
) -> None:
    await join_group(sasl_kafka, "results", RESULTS_GROUP, events_topic(PREFIX))
    await join_group(sasl_kafka, "streamer", f"{STREAMER_GROUP}-retry", retry_topic(PREFIX))
    with pytest.raises(GroupAuthorizationFailedError):
        await join_group(sasl_kafka, "notifier", RESULTS_GROUP, events_topic(PREFIX))
    with pytest.raises(GroupAuthorizationFailedError):
        await join_group(sasl_kafka, "results", STREAMER_GROUP, events_topic(PREFIX))


@pytest.mark.parametrize(
    ("user", "password"),
    [("mallory", "guess"), ("gateway", "not-the-gateway-password"), (ADMIN_USER, "guess")],
)
async def test_an_unknown_user_or_a_wrong_password_cannot_connect(
    sasl_kafka: KafkaNode, user: str, password: str
) -> None:
    producer = AIOKafkaProducer(
        **as_user(user, password),
        bootstrap_servers=sasl_kafka.bootstrap_servers,
        request_timeout_ms=5000,
    )
    with pytest.raises(KafkaError):
        await asyncio.wait_for(producer.start(), 30)
    await producer.stop()


async def test_a_client_without_sasl_cannot_talk_to_the_broker(sasl_kafka: KafkaNode) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=sasl_kafka.bootstrap_servers, request_timeout_ms=3000
    )
    with pytest.raises((KafkaConnectionError, KafkaError, TimeoutError)):
        await asyncio.wait_for(producer.start(), 15)
    await producer.stop()


async def test_every_service_sees_every_topic_so_start_up_creates_none(
    sasl_kafka: KafkaNode,
) -> None:
    for user in (*SERVICE_PRINCIPALS, DOCTOR_PRINCIPAL):
        # Would raise if a topic were missing from its view: no one may create topics.
        await ensure_topics(
            sasl_kafka.bootstrap_servers, PREFIX, 2, security=as_user(user), timeout_s=10
        )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_gateway_and_results_services_work_end_to_end_over_sasl(
    sasl_kafka: KafkaNode, database_url: str, auth_secret: str, http: aiohttp.ClientSession
) -> None:
    bootstrap = sasl_kafka.bootstrap_servers
    gateway = create_gateway(
        GatewaySettings(
            kafka_bootstrap_servers=bootstrap,
            topic_prefix=PREFIX,
            job_partitions=2,
            streamjobs_auth_secret=auth_secret,
            gateway_port=0,
            gateway_host="127.0.0.1",
            results_url=f"http://127.0.0.1:{free_port()}",
            results_timeout_s=5,
            gateway_public_ws_url="ws://127.0.0.1:1/ws",
            gateway_admission_partitions=2,
            **principal_settings("gateway"),
        )
    )
    await gateway.start()
    try:
        token = issue_token(auth_secret, "alice")
        async with http.post(
            f"http://127.0.0.1:{gateway.port}/api/v1/jobs",
            headers={"Authorization": f"Bearer {token}"},
            json={"prompt": "hi", "job_type": "analysis", "priority": "urgent"},
        ) as resp:
            assert resp.status == 202, await resp.text()
            job_id = (await resp.json())["job_id"]
    finally:
        await gateway.stop()

    # The streamer's principal finds the job where the gateway's put it.
    consumer = AIOKafkaConsumer(
        job_topic(Priority.URGENT, PREFIX),
        **as_user("streamer"),
        bootstrap_servers=bootstrap,
        group_id=STREAMER_GROUP,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )
    await consumer.start()
    try:

        async def job_seen() -> bool:
            batch = await consumer.getmany(timeout_ms=500)
            # The permission tests above left bare `{}` records on this topic: skip them.
            values = [r.value for rs in batch.values() for r in rs if r.value != b"{}"]
            return any(parse_record(v or b"").job_id == job_id for v in values)

        await wait_for(job_seen, timeout=30, message="the gateway's job on the urgent topic")
    finally:
        await consumer.stop()

    # The results service, as its own principal, persists what the streamer's principal wrote.
    script = job_script(f"sasl-{uuid.uuid4().hex[:8]}")
    producer = make_producer(bootstrap, security=as_user("streamer"))
    await producer.start()
    try:
        await publish_script(producer, PREFIX, script)
    finally:
        await producer.stop()
    settings = settings_for(
        bootstrap,
        PREFIX,
        database_url,
        auth_secret,
        job_partitions=2,
        results_group_id=RESULTS_GROUP,
        **principal_settings("results"),
    )
    async with running(settings):
        await wait_for(
            lambda: count(
                database_url,
                "SELECT count(*) FROM jobs WHERE job_id = $1 AND status = 'completed'",
                script.accepted.job_id,
            ),
            timeout=40,
            message="the job persisted by the results service over SASL",
        )


async def start_admission_producer_as(kafka: KafkaNode, user: str) -> None:
    """Start (InitProducerId) and stop the transactional producer of admission partition 0."""
    producer = AIOKafkaProducer(
        **as_user(user),
        bootstrap_servers=kafka.bootstrap_servers,
        transactional_id=transactional_id(PREFIX, 0),
        enable_idempotence=True,
        acks="all",
    )
    try:
        await asyncio.wait_for(producer.start(), 20)
    finally:
        await producer.stop()


async def test_only_a_principal_granted_the_admission_transactional_ids_can_admit(
    sasl_kafka: KafkaNode,
) -> None:
    # An admission owner decides only through its partition's transactional producer: a
    # principal with every other grant of the gateway is refused that producer, so no job.
    await start_admission_producer_as(sasl_kafka, "gateway")
    with pytest.raises(TransactionalIdAuthorizationFailed):
        await start_admission_producer_as(sasl_kafka, UNTRANSACTED)


async def test_a_service_that_may_not_see_its_topics_stops_naming_them(
    sasl_kafka: KafkaNode,
) -> None:
    # Under another prefix the notifier has no grant at all: nothing may pass as created.
    with pytest.raises(TopicsUnavailable) as refused:
        await ensure_topics(
            sasl_kafka.bootstrap_servers, "other", 2, security=as_user("notifier"), timeout_s=10
        )
    assert refused.value.refused == dict.fromkeys(
        streamjobs_topics("other", 2), "TopicAuthorizationFailedError"
    )
    assert not refused.value.retriable


async def test_a_service_may_not_create_the_revocations_topic_and_is_told_so(
    sasl_kafka: KafkaNode,
) -> None:
    # Without this, a refused creation looked like a topic still electing its leader.
    with pytest.raises(TopicsUnavailable) as refused:
        await ensure_revocations_topic(
            sasl_kafka.bootstrap_servers, "other", security=as_user("gateway"), timeout_s=10
        )
    assert refused.value.refused == {"other.revocations": "TopicAuthorizationFailedError"}
