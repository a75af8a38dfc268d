"""Wiring of the results service: PostgreSQL pool and migrations, the persister, the read API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client import CollectorRegistry

from services.results.api import ReadApi
from services.results.channels import (
    INSTANCES_READER,
    PERSISTER,
    WEBHOOK_DELIVERER,
    WEBHOOK_PLANNER,
)
from services.results.consumer import CommitObserver, Persister
from services.results.faults import CONNECTION_ERRORS
from services.results.instances import Board, InstancesReader
from services.results.metrics import ResultsMetrics
from services.results.migrations import migrate
from services.results.projection import Rules
from services.results.retention import sweep
from services.results.settings import ResultsSettings
from services.results.webhook_deliverer import WebhookDeliverer
from services.results.webhook_planner import WebhookPlanner
from shared.http import add_ops_routes, serve_http
from shared.jobtypes import load_job_types
from shared.kafka import client_options, ensure_service_topics, make_producer
from shared.prices import load_prices
from shared.revocation import follow_revocations
from shared.runtime import BackgroundTasks, start_or_unwind
from shared.topics import WEBHOOK_DELIVERER_SUFFIX, WEBHOOK_PLANNER_SUFFIX, webhooks_retry_topic
from shared.verifier import TokenVerifier
from shared.webhooks import AllowList, Schedule, signing_key, user_secret

log = logging.getLogger(__name__)


class ResultsService:
    def __init__(
        self,
        settings: ResultsSettings,
        registry: CollectorRegistry,
        *,
        observer: CommitObserver | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = ResultsMetrics(registry)
        self.port = 0
        self.instance = settings.instance_id or f"{socket.gethostname()}:{os.getpid()}"
        self.persister: Persister | None = None
        self.planner: WebhookPlanner | None = None
        self.deliverer: WebhookDeliverer | None = None
        self._observer = observer
        self.verifier = TokenVerifier.from_settings(settings)
        workloads = settings.streamjobs_workloads_file
        self.rules = Rules(load_job_types(workloads), load_prices(workloads))
        self._pool: asyncpg.Pool | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._background = BackgroundTasks()
        self._stack = contextlib.AsyncExitStack()
        self._started = False

    @property
    def background(self) -> BackgroundTasks:
        return self._background

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "the service is not started"
        return self._pool

    async def start(self) -> None:
        await start_or_unwind(self._stack, self._start)

    async def _start(self) -> None:
        s = self.settings
        stack = self._stack
        pool = await self._connect()
        stack.push_async_callback(pool.close)
        self._pool = pool
        async with pool.acquire() as conn:
            await migrate(conn)
        security = client_options(s)
        await ensure_service_topics(s)

        consumer = AIOKafkaConsumer(
            *PERSISTER.topics(s.topic_prefix),
            **security,
            bootstrap_servers=s.kafka_bootstrap_servers,
            group_id=s.results_group_id,
            client_id=f"results-{self.instance}",
            enable_auto_commit=False,
            # Records of a transaction that aborted were never written.
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            session_timeout_ms=s.results_session_timeout_ms,
            heartbeat_interval_ms=s.results_heartbeat_interval_ms,
            max_poll_records=s.results_batch_size,
            **_paced_fetches(s),
        )
        await consumer.start()
        stack.push_async_callback(consumer.stop)
        self._consumer = consumer
        producer = make_producer(
            s.kafka_bootstrap_servers, client_id=f"results-{self.instance}", security=security
        )
        await producer.start()
        stack.push_async_callback(producer.stop)
        self.persister = Persister(
            s, consumer, producer, pool, self.metrics, rules=self.rules, observer=self._observer
        )

        (topic,) = INSTANCES_READER.topics(s.topic_prefix)
        instances = InstancesReader(
            s.kafka_bootstrap_servers,
            topic,
            Board(stale_periods=s.results_instance_stale_periods),
            client_id=f"results-instances-{self.instance}",
            security=security,
        )
        stack.push_async_callback(instances.stop)
        # Clients that wait on nothing of each other's: started side by side, each start
        # is a few broker round trips, and one after another they added up to a second.
        async with asyncio.TaskGroup() as starting:
            starting.create_task(self._start_webhooks(producer, pool))
            starting.create_task(
                follow_revocations(
                    s, self.verifier, stack, self._background, client_id=f"results-{self.instance}"
                )
            )
            starting.create_task(instances.start())
        self._background.spawn(instances.loop())
        app = web.Application()
        add_ops_routes(app, self.registry, self._ready)
        ReadApi(
            pool,
            self.verifier,
            self.metrics,
            max_page_bytes=s.results_max_page_bytes,
            instances=instances,
        ).install(app)
        self.port = await serve_http(app, s.results_host, s.results_port, stack)

        self._started = True
        self._background.spawn(self._persist_loop())
        self._background.spawn(self._webhook_loop(self._planner_run))
        self._background.spawn(self._webhook_loop(self._deliverer_run))
        if s.results_retention_days > 0:
            self._background.spawn(self._retention_loop())
        log.info("results %s up: port %d", self.instance, self.port)

    def _consumer_of(
        self, group: str | None, name: str, *, paced: bool = False
    ) -> AIOKafkaConsumer:
        """`paced`: a consumer of the busy topics, whose fetches the broker may hold to fill."""
        s = self.settings
        return AIOKafkaConsumer(
            **client_options(s),
            bootstrap_servers=s.kafka_bootstrap_servers,
            group_id=group,
            client_id=f"results-{name}-{self.instance}",
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            session_timeout_ms=s.results_session_timeout_ms,
            heartbeat_interval_ms=s.results_heartbeat_interval_ms,
            **(_paced_fetches(s) if paced else {}),
        )

    async def _start_webhooks(self, producer: AIOKafkaProducer, pool: asyncpg.Pool) -> None:
        """The planner (final events -> deliveries) and the deliverer, consumers of their own
        groups: a slow receiver never holds back what the persister stores."""
        s, stack, prefix = self.settings, self._stack, self.settings.topic_prefix
        # Named after the persister's group (RESULTS_GROUP_ID), so one prefixed ACL covers all.
        group = s.results_group_id
        planner_consumer = self._consumer_of(group + WEBHOOK_PLANNER_SUFFIX, "planner", paced=True)
        planner_consumer.subscribe(WEBHOOK_PLANNER.topics(prefix))
        stack.push_async_callback(planner_consumer.stop)
        self.planner = WebhookPlanner(
            planner_consumer, producer, pool, self.metrics, topic_prefix=prefix
        )
        key = signing_key(s.webhook_signing_key, s.streamjobs_auth_secret)
        deliverer_consumer = self._consumer_of(group + WEBHOOK_DELIVERER_SUFFIX, "deliverer")
        self.deliverer = WebhookDeliverer(
            deliverer_consumer,
            producer,
            pool,
            self.metrics,
            secret_of=lambda user_id: user_secret(key, user_id),
            allow=AllowList.parse(s.webhook_allow),
            schedule=Schedule.parse(s.webhook_schedule_s, s.webhook_window_s),
            timeout_s=s.webhook_timeout_s,
            retry_topic=webhooks_retry_topic(prefix),
            max_pending=s.webhook_max_pending,
        )
        deliverer_consumer.subscribe(WEBHOOK_DELIVERER.topics(prefix), listener=self.deliverer)
        stack.push_async_callback(deliverer_consumer.stop)
        await asyncio.gather(planner_consumer.start(), deliverer_consumer.start())
        self.metrics.webhook_oldest_pending.set_function(self.deliverer.oldest_pending_s)

    async def _planner_run(self, rewind: bool) -> None:
        assert self.planner is not None
        if rewind:
            await self.planner.rewind()
        await self.planner.run()

    async def _deliverer_run(self, rewind: bool) -> None:
        assert self.deliverer is not None
        if rewind:
            await self.deliverer.rewind()
        await self.deliverer.run()

    async def _webhook_loop(self, run: Callable[[bool], Awaitable[None]]) -> None:
        rewind = False
        while True:
            try:
                await run(rewind)
            except asyncio.CancelledError:
                raise
            except Exception:  # the consumer loop's boundary: log, rewind, go on
                log.exception("webhook loop crashed; going on from the committed offsets")
                rewind = True
                await asyncio.sleep(1)

    async def _connect(self) -> asyncpg.Pool:
        """A pool, once PostgreSQL answers (it may still be starting next to us)."""
        s = self.settings
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            try:
                pool = await asyncpg.create_pool(
                    s.database_url,
                    min_size=1,
                    max_size=s.database_pool_size,
                    timeout=5,
                    command_timeout=30,
                )
            except CONNECTION_ERRORS as exc:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                log.warning("PostgreSQL not reachable yet: %s", exc)
                await asyncio.sleep(0.5)
            else:
                assert pool is not None
                return pool

    async def stop(self) -> None:
        if not self._started:
            await self._stack.aclose()
            return
        self._started = False
        # A batch cut short is neither committed to Kafka nor to PostgreSQL: it comes again.
        await self._background.cancel()
        await self._stack.aclose()

    async def _persist_loop(self) -> None:
        assert self.persister is not None
        rewind = False
        while True:
            try:
                if rewind:
                    # The records of the batch the error cut short were neither stored nor
                    # dead-lettered: read them again rather than commit past them.
                    await self.persister.rewind()
                    rewind = False
                await self.persister.run()
            except asyncio.CancelledError:
                raise
            except Exception:  # the consumer loop's boundary: log, rewind, go on
                log.exception("persister loop crashed; rewinding to the committed offsets")
                self.metrics.persister_restarts.inc()
                rewind = True
                await asyncio.sleep(1)

    async def _retention_loop(self) -> None:
        s = self.settings
        while True:
            try:
                async with self.pool.acquire() as conn:
                    while (cleared := await sweep(conn, s.results_retention_days)) > 0:
                        self.metrics.retention_cleared.inc(cleared)
            except CONNECTION_ERRORS as exc:
                log.warning("retention sweep skipped: %s", exc)
            await asyncio.sleep(s.results_retention_interval_s)

    async def _ready(self) -> dict[str, bool]:
        database = False
        if self._pool is not None and self._started:
            try:
                async with asyncio.timeout(1.0):
                    async with self._pool.acquire() as conn:
                        database = await conn.fetchval("SELECT true") is True
            except (*CONNECTION_ERRORS, asyncpg.PostgresError):
                database = False
        persister_ok = self.persister is not None and self.persister.db_ok
        return {
            "database": database and persister_ok,
            "kafka_consumer": self._consumer is not None and self._started,
            "background_loops": self._background.healthy(),
        }


def create_service(
    settings: ResultsSettings,
    *,
    registry: CollectorRegistry | None = None,
    observer: CommitObserver | None = None,
) -> ResultsService:
    return ResultsService(
        settings, registry if registry is not None else CollectorRegistry(), observer=observer
    )


def _paced_fetches(s: ResultsSettings) -> dict[str, int]:
    """Fetch settings of the consumers of every record (the persister, the webhook planner).

    With the defaults a broker answers a fetch as soon as one record is appended, so at a
    moderate rate every record costs each of them a fetch round trip, on the broker as on
    us. Held until they fill or RESULTS_FETCH_MAX_WAIT_MS passes, fetches carry what
    arrived meanwhile; nothing of theirs is latency-bound that closely.
    """
    return {
        "fetch_max_wait_ms": s.results_fetch_max_wait_ms,
        "fetch_min_bytes": s.results_fetch_min_bytes,
    }
