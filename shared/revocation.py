"""Token revocation over Kafka: a compacted topic keyed by token id, read whole by every service.

`revoke()` publishes one record; every service's `RevocationFollower` reads the topic from
the beginning at start-up (before it serves) and then follows it, feeding its
`TokenVerifier`. Each record carries the token's expiry, so readers drop entries that no
longer matter and a tombstone (null value) may prune the topic after that time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AsyncExitStack

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import BaseModel, ConfigDict, ValidationError

from shared.follower import PartitionFollower, StartAt, each_record
from shared.kafka import (
    KafkaOptions,
    TopicSpec,
    client_options,
    create_missing_topics,
    make_producer,
    with_admin,
)
from shared.runtime import BackgroundTasks
from shared.settings import CommonSettings, TopicReplicationSettings
from shared.topics import revocations_topic
from shared.verifier import TokenVerifier

log = logging.getLogger(__name__)

POLL_MS = 500  # how soon a new revocation is seen, at worst


class TokenRevoked(BaseModel):
    """The value of a revocations record; the key is the same `jti`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    jti: str
    exp: int  # the token's own expiry (epoch seconds): after it the entry is moot
    revoked_at: int


async def ensure_revocations_topic(
    bootstrap: str,
    prefix: str,
    *,
    timeout_s: float = 30.0,
    security: KafkaOptions | None = None,
    replication: TopicReplicationSettings | None = None,
) -> str:
    """Create the compacted revocations topic if it is missing; returns its name.

    Under Kafka ACLs services may not create topics: the operator's admin creates this one
    with the others, and a service only finds it here. Replicas and `min.insync.replicas`
    come from `replication`, by default from the environment.
    """
    topic = revocations_topic(prefix)
    # One partition: revocations are few and every reader wants them all, in order.
    spec = {topic: TopicSpec(1, {"cleanup.policy": "compact"})}
    replicas = replication or TopicReplicationSettings()

    async def create(admin: AIOKafkaAdminClient, deadline: float) -> str:
        await create_missing_topics(admin, spec, replicas)
        # A reader that asks for the topic's metadata before its leader is elected is told
        # it does not exist, and would not ask again for minutes: wait for the leader here.
        while not await _has_leaders(admin, topic):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"topic {topic} has no leader after {timeout_s:g} s")
            await asyncio.sleep(0.1)
        return topic

    return await with_admin(bootstrap, create, timeout_s=timeout_s, security=security)


async def _has_leaders(admin: AIOKafkaAdminClient, topic: str) -> bool:
    for described in await admin.describe_topics([topic]):
        partitions = described.get("partitions") or []
        if described.get("error_code") or not partitions:
            return False
        if any(p.get("error_code") or p.get("leader", -1) < 0 for p in partitions):
            return False
    return True


async def revoke(
    bootstrap: str,
    prefix: str,
    token_id: str,
    expires_at: int,
    *,
    security: KafkaOptions | None = None,
) -> None:
    """Publish the revocation of `token_id` and wait until the broker has it."""
    topic = await ensure_revocations_topic(bootstrap, prefix, security=security)
    record = TokenRevoked(jti=token_id, exp=expires_at, revoked_at=int(time.time()))
    producer = make_producer(
        bootstrap, linger_ms=0, client_id="streamjobs-revoke", security=security
    )
    await producer.start()
    try:
        await producer.send_and_wait(
            topic, key=token_id.encode(), value=record.model_dump_json().encode()
        )
    finally:
        await producer.stop()


class RevocationFollower:
    """Reads every revocation into a verifier: the whole topic at start, then as it grows."""

    def __init__(
        self,
        bootstrap: str,
        prefix: str,
        verifier: TokenVerifier,
        *,
        client_id: str = "",
        security: KafkaOptions | None = None,
        replication: TopicReplicationSettings | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.security = security or {}
        self.replication = replication
        self.prefix = prefix
        self.topic = revocations_topic(prefix)
        self.verifier = verifier
        self.client_id = client_id or "streamjobs-revocations"
        # No group: every instance of every service must see every revocation.
        self._follower = PartitionFollower(
            bootstrap,
            [self.topic],
            each_record(self._apply),
            start=StartAt.BEGINNING,
            poll_ms=POLL_MS,
            name="revocations",
            security=self.security,
            client_id=self.client_id,
            auto_offset_reset="earliest",
        )
        self.caught_up = False

    @property
    def consumer(self) -> AIOKafkaConsumer:
        return self._follower.consumer

    async def start(self, *, catchup_timeout_s: float = 15.0) -> None:
        """Join the topic and read it to its end, so no revoked token is served at start-up."""
        await ensure_revocations_topic(
            self.bootstrap, self.prefix, security=self.security, replication=self.replication
        )
        await self._follower.start()
        try:
            async with asyncio.timeout(catchup_timeout_s):
                await self._follower.catch_up()
        except TimeoutError:
            log.warning(
                "revocations not read to the end after %g s; serving with %d known",
                catchup_timeout_s,
                self.verifier.revoked_count,
            )
        else:
            self.caught_up = True
        log.info("revocations followed: %d tokens revoked", self.verifier.revoked_count)

    async def poll(self) -> None:
        await self._follower.poll()

    def _apply(self, record: ConsumerRecord[bytes, bytes]) -> None:
        if record.key is None:
            log.warning("revocation without a key at offset %d", record.offset)
            return
        token_id = record.key.decode(errors="replace")
        if record.value is None:
            self.verifier.unrevoke(token_id)
            return
        try:
            revoked = TokenRevoked.model_validate_json(record.value)
        except ValidationError:
            # Every instance reads this topic: one bad record is logged, never fatal.
            log.warning("unparseable revocation at offset %d", record.offset)
            return
        self.verifier.revoke(token_id, revoked.exp)
        if self.caught_up:  # the start-up replay is summed up once, not logged per record
            log.info("token %s revoked", token_id)

    async def loop(self) -> None:
        await self._follower.run()

    async def stop(self) -> None:
        await self._follower.stop()


async def follow_revocations(
    settings: CommonSettings,
    verifier: TokenVerifier,
    stack: AsyncExitStack,
    background: BackgroundTasks,
    *,
    client_id: str,
) -> RevocationFollower:
    """Wire a follower into a service being started: read to the end, then follow."""
    follower = RevocationFollower(
        settings.kafka_bootstrap_servers,
        settings.topic_prefix,
        verifier,
        client_id=client_id,
        security=client_options(settings),
        replication=settings,
    )
    stack.push_async_callback(follower.stop)
    await follower.start(catchup_timeout_s=settings.streamjobs_auth_revocations_catchup_s)
    background.spawn(follower.loop())
    return follower
