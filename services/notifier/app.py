"""Wiring of the notifier: Kafka reader → hub → WebSocket and SSE endpoints, ops HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time

from aiohttp import web
from prometheus_client import CollectorRegistry
from websockets.asyncio.server import Server, serve

from services.notifier.access import TokenCheck
from services.notifier.connection import BoundedConnection
from services.notifier.hub import Hub
from services.notifier.limits import ConnectionLimits
from services.notifier.metrics import NotifierMetrics
from services.notifier.owners import OwnerIndex
from services.notifier.placement import Placement
from services.notifier.reader import Reader
from services.notifier.settings import NotifierSettings
from services.notifier.sse import SseEndpoint
from services.notifier.ws import WebSocketEndpoint
from shared.http import add_ops_routes, serve_http
from shared.kafka import client_options, ensure_service_topics
from shared.revocation import follow_revocations
from shared.runtime import BackgroundTasks, start_or_unwind
from shared.topics import chunks_topic, events_topic
from shared.verifier import TokenVerifier

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 0.25
# Socket bytes a send may leave unsent before it waits (the library's default); past it,
# BoundedConnection also stops reading the client.
WRITE_LIMIT = 2**15


class NotifierService:
    def __init__(self, settings: NotifierSettings, registry: CollectorRegistry) -> None:
        s = settings
        self.settings = settings
        self.registry = registry
        self.metrics = NotifierMetrics(registry)
        self.instance = s.instance_id or f"{socket.gethostname()}:{os.getpid()}"
        self.placement = Placement(
            s.notifier_instance, s.notifier_instances, s.public_ws_urls, s.public_sse_urls
        )
        self.hub = Hub(
            self.metrics,
            ttl_s=s.notifier_job_ttl_s,
            max_jobs=s.notifier_max_jobs,
            pending_s=s.notifier_pending_subscribe_s,
            final_wait_s=s.notifier_final_wait_s,
            max_resyncs=s.notifier_max_resyncs,
            max_subscriptions=s.notifier_max_subscriptions,
            owners=OwnerIndex(s.notifier_max_owners),
            placement=self.placement,
        )
        # One cap for both transports: a process holds so many sockets, whatever they speak.
        self.limits = ConnectionLimits(
            s.notifier_max_connections, s.notifier_max_connections_per_user
        )
        self.verifier = TokenVerifier.from_settings(settings)
        tokens = TokenCheck(self.verifier)
        self.ws = WebSocketEndpoint(
            s, self.hub, self.metrics, registry, self._ready_now, self.limits, tokens
        )
        self.sse = SseEndpoint(s, self.hub, self.metrics, self.limits, tokens, self.placement)
        self.verifier.on_revoke(self.ws.close_revoked)
        self.reader: Reader | None = None
        self.port = 0
        self.sse_port = 0
        self._server: Server | None = None
        self._stack = contextlib.AsyncExitStack()
        self._background = BackgroundTasks()
        self._started = False

    @property
    def background(self) -> BackgroundTasks:
        return self._background

    async def start(self) -> None:
        await start_or_unwind(self._stack, self._start)

    async def _start(self) -> None:
        s = self.settings
        self._started = True
        security = client_options(s)
        await ensure_service_topics(s)
        reader = Reader(
            s.kafka_bootstrap_servers,
            events_topic(s.topic_prefix),
            chunks_topic(s.topic_prefix),
            lookback_s=s.notifier_lookback_s,
            on_event=self.hub.on_event,
            on_chunk=self.hub.on_chunk,
            on_history=self.hub.on_history,
            metrics=self.metrics,
            placement=self.placement,
            client_id=f"notifier-{self.instance}",
            security=security,
            fetch_max_wait_ms=s.notifier_fetch_max_wait_ms,
            fetch_min_bytes=s.notifier_fetch_min_bytes,
            after_batch=self.ws.flusher.flush,
            # A batch never holds more of one job's chunks than half an outbox, so a client
            # whose outbox only empties when its own task runs (SSE) has room for all of them.
            max_records=max(1, min(2000, s.notifier_queue_frames // 2)),
        )
        self.reader = reader
        self._stack.push_async_callback(reader.stop)
        await reader.start()
        self._background.spawn(reader.run())
        await follow_revocations(
            s, self.verifier, self._stack, self._background, client_id=f"notifier-{self.instance}"
        )

        server = await serve(
            self.ws.handler,
            s.notifier_host,
            s.notifier_port,
            process_request=self.ws.process_request,
            create_connection=BoundedConnection,  # bounds the library's automatic pongs
            compression=None,  # a deflate context per connection costs ~300 KB
            # No keepalive task per connection: the sweep pings (WebSocketEndpoint.keepalive).
            ping_interval=None,
            ping_timeout=None,
            close_timeout=2,
            max_size=s.notifier_max_message_bytes,
            max_queue=8,
            write_limit=WRITE_LIMIT,
        )
        self._server = server
        self._stack.push_async_callback(self._close_websockets)
        self.port = server.sockets[0].getsockname()[1]

        app = web.Application()
        add_ops_routes(app, self.registry, self._ready)
        self.sse.routes(app)
        self.sse_port = await serve_http(
            app, s.notifier_host, s.notifier_sse_port, self._stack, shutdown_timeout=1.0
        )
        self._background.spawn(self._sweep_loop())

        # Rebuild: the lookback window is replayed before the notifier says it is ready.
        async with asyncio.timeout(s.notifier_rebuild_timeout_s):
            await reader.caught_up.wait()
        self.hub.live = True
        log.info(
            "notifier %s (%d of %d, chunk partitions %s) up: ws %d, sse %d, %d jobs rebuilt",
            self.instance,
            s.notifier_instance,
            s.notifier_instances,
            [tp.partition for tp in reader.follower.partitions if tp.topic == reader.chunks_topic],
            self.port,
            self.sse_port,
            len(self.hub.jobs),
        )

    async def _close_websockets(self) -> None:
        if self._server is not None:
            self._server.close()  # 1001 going away to every client
            await self._server.wait_closed()

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        await self._background.cancel()
        await self._stack.aclose()

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            now = time.monotonic()
            self.hub.sweep(now)
            self.ws.sweep(now)
            if self.reader is not None:
                self.reader.update_lag()

    def _ready_now(self) -> dict[str, bool]:
        return {
            "started": self._started,
            "history_replayed": self.reader is not None and self.reader.caught_up.is_set(),
            "background_loops": self._background.healthy(),
        }

    async def _ready(self) -> dict[str, bool]:
        return self._ready_now()


def create_service(
    settings: NotifierSettings, *, registry: CollectorRegistry | None = None
) -> NotifierService:
    return NotifierService(settings, registry if registry is not None else CollectorRegistry())
