"""The gateway's composition root: producer, events view and its reader, the read-side and
live-stream clients, the use cases over them, and the HTTP app."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from services.gateway.admission import Admission
from services.gateway.admission_link import AdmissionLink, KafkaAdmissionLink
from services.gateway.admission_owner import AdmissionOwner, admission_producer
from services.gateway.admission_records import AdmissionRequest, admissions_topic
from services.gateway.admission_topics import admission_topics
from services.gateway.cancel import Cancels
from services.gateway.events import EventsReader
from services.gateway.handlers import Gateway
from services.gateway.limits import StreamSlots
from services.gateway.metrics import GatewayMetrics
from services.gateway.proxy import ResultsClient, SseClient
from services.gateway.publisher import Publish, Publisher
from services.gateway.repair import Repairs
from services.gateway.retry import Retries
from services.gateway.routes import build_app
from services.gateway.settings import GatewaySettings
from services.gateway.view import EventsView
from shared.contracts import Envelope
from shared.http import serve_http
from shared.jobtypes import load_job_types
from shared.kafka import (
    client_options,
    ensure_service_topics,
    make_producer,
    publish,
)
from shared.revocation import follow_revocations
from shared.runtime import BackgroundTasks, start_or_unwind
from shared.topics import chunks_topic, control_topic, events_topic
from shared.verifier import TokenVerifier
from shared.webhook_defaults import (
    Send,
    WebhookDefaults,
    defaults_follower,
)

log = logging.getLogger(__name__)


def build_gateway(
    settings: GatewaySettings,
    metrics: GatewayMetrics,
    view: EventsView,
    send: Publish,
    results: ResultsClient,
    *,
    verifier: TokenVerifier,
    link: AdmissionLink,
    sse: SseClient | None = None,
    webhook_defaults: WebhookDefaults | None = None,
    send_default: Send | None = None,
) -> Gateway:
    """The handlers over their use cases, each over the ports it needs."""
    prefix = settings.topic_prefix
    publisher = Publisher(send, timeout_s=settings.gateway_publish_timeout_s)
    repairs = Repairs(
        publisher,
        prefix=prefix,
        max_tasks=settings.gateway_max_background_publishes,
        drain_timeout_s=settings.gateway_publish_timeout_s,
    )
    return Gateway(
        settings,
        metrics,
        view,
        publisher=publisher,
        repairs=repairs,
        admission=Admission(
            link,
            metrics,
            repairs,
            instance=settings.gateway_instance_id,
            timeout_s=settings.gateway_publish_timeout_s,
            reply_partition=settings.gateway_reply_partition,
        ),
        cancels=Cancels(
            view,
            metrics,
            publisher,
            results,
            prefix=prefix,
            per_minute=settings.gateway_cancels_per_minute,
        ),
        results=results,
        retries=Retries(
            results,
            metrics,
            job_types=load_job_types(settings.streamjobs_workloads_file),
            max_prompt_chars=settings.gateway_max_prompt_chars,
            max_depth=settings.gateway_max_json_depth,
            max_messages=settings.gateway_max_messages,
        ),
        streams=StreamSlots(
            capacity=settings.gateway_sse_max_streams,
            per_user=settings.gateway_sse_max_streams_per_user,
            wait_s=settings.gateway_sse_wait_s,
        ),
        verifier=verifier,
        sse=sse,
        webhook_defaults=webhook_defaults,
        send_default=send_default,
    )


class GatewayService:
    def __init__(self, settings: GatewaySettings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = GatewayMetrics(registry)
        # Read once here (the handlers get the same, cached): a wrong file stops start-up.
        load_job_types(settings.streamjobs_workloads_file)
        self.instance = settings.gateway_instance_id
        self.view = EventsView(
            submissions_per_minute=settings.gateway_submissions_per_minute,
            max_in_flight=settings.gateway_max_in_flight,
            window_s=settings.gateway_idempotency_window_s,
            final_retention_s=settings.gateway_view_final_retention_s,
            max_jobs=settings.gateway_view_max_jobs,
            in_flight_retry_after_s=settings.gateway_in_flight_retry_after_s,
            max_idempotency_keys=settings.gateway_idempotency_max_keys,
        )
        self.results = ResultsClient(settings.results_url, timeout_s=settings.results_timeout_s)
        self.sse = (
            SseClient(
                settings.notifier_sse_urls[0], max_connections=settings.gateway_sse_max_streams
            )
            if settings.notifier_sse_urls
            else None
        )
        self.verifier = TokenVerifier.from_settings(settings)
        self.port = 0
        self.api: Gateway | None = None
        self._producer: AIOKafkaProducer | None = None
        self._reader: EventsReader | None = None
        self.owner: AdmissionOwner | None = None
        self._stack = contextlib.AsyncExitStack()
        self._background = BackgroundTasks()
        self._started = False

    @property
    def background(self) -> BackgroundTasks:
        return self._background

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _follow_webhook_defaults(self) -> WebhookDefaults:
        """Every user's default webhook URL, read to the end before serving, then followed."""
        s = self.settings
        defaults = WebhookDefaults()
        follower = defaults_follower(
            s.kafka_bootstrap_servers,
            s.topic_prefix,
            defaults,
            client_id=f"gateway-{self.instance}",
            security=client_options(s),
        )
        self._stack.push_async_callback(follower.stop)
        await follower.start()
        try:
            async with asyncio.timeout(s.gateway_view_catchup_timeout_s):
                await follower.catch_up()
        except TimeoutError:
            log.warning("webhook defaults not read to the end; serving with %d", len(defaults))
        self._background.spawn(follower.run())
        return defaults

    async def start(self) -> None:
        await start_or_unwind(self._stack, self._start)

    async def _start(self) -> None:
        s = self.settings
        prefix = s.topic_prefix
        stack = self._stack
        security = client_options(s)
        await ensure_service_topics(s, admission_topics(prefix, s.gateway_admission_partitions))
        producer = make_producer(
            s.kafka_bootstrap_servers, client_id=f"gateway-{self.instance}", security=security
        )
        stack.push_async_callback(producer.stop)
        await producer.start()
        # Know every partition we write to now: in a broker outage a send must be queued at
        # once, not wait for metadata, so a void (cancel) follows its job's records closely.
        for topic in (events_topic(prefix), control_topic(prefix)):
            await producer.partitions_for(topic)
        # A job's notifier follows from its chunk partition: links need the partition count.
        chunk_partitions = len(await producer.partitions_for(chunks_topic(prefix)))
        self._producer = producer

        reader = EventsReader(
            s.kafka_bootstrap_servers,
            s.topic_prefix,
            self.view,
            lookback_s=s.gateway_events_lookback_s,
            security=security,
        )
        stack.push_async_callback(reader.stop)
        await reader.start()
        self._reader = reader
        self._background.spawn(reader.loop())
        try:
            async with asyncio.timeout(s.gateway_view_catchup_timeout_s):
                await reader.caught_up()
        except TimeoutError:
            log.warning(
                "events view not caught up after %g s; serving", s.gateway_view_catchup_timeout_s
            )

        await self.results.start()
        stack.push_async_callback(self.results.stop)
        if self.sse is not None:
            await self.sse.start()
            stack.push_async_callback(self.sse.stop)

        await follow_revocations(
            s, self.verifier, stack, self._background, client_id=f"gateway-{self.instance}"
        )
        defaults = await self._follow_webhook_defaults()

        # The single writer of this instance's share of users, once the view has caught up:
        # what it rebuilds on taking a partition is only what the view may not hold yet.
        owner = AdmissionOwner(
            s.kafka_bootstrap_servers,
            prefix,
            self.view,
            self.metrics,
            instance=self.instance,
            batch=s.gateway_admission_batch,
            rebuild_s=s.gateway_admission_rebuild_s,
            security=security,
            session_timeout_ms=s.gateway_admission_session_timeout_ms,
            max_transactions=s.gateway_admission_max_transactions,
        )
        stack.push_async_callback(owner.stop)
        await owner.start()
        self.owner = owner
        self._background.spawn(owner.loop())
        try:
            async with asyncio.timeout(s.gateway_view_catchup_timeout_s):
                await owner.joined.wait()
        except TimeoutError:
            log.warning(
                "admission group not joined after %g s; serving", s.gateway_view_catchup_timeout_s
            )

        # Requests have a producer of their own, tuned for them: cancels and voids on the
        # other never wait behind a full batch of requests, nor requests behind them.
        requests = admission_producer(
            s.kafka_bootstrap_servers,
            client_id=f"gateway-requests-{self.instance}",
            linger_ms=s.gateway_admission_linger_ms,
            security=security,
        )
        stack.push_async_callback(requests.stop)
        await requests.start()
        await requests.partitions_for(admissions_topic(prefix))

        async def send_request(user_id: str, request: bytes) -> None:
            await requests.send_and_wait(
                admissions_topic(prefix), value=request, key=user_id.encode()
            )

        async def append_request(request: AdmissionRequest) -> None:
            await send_request(request.user_id, request.to_bytes())

        link = KafkaAdmissionLink(
            s.kafka_bootstrap_servers,
            prefix,
            send_request,
            instance=self.instance,
            reply_partition=s.gateway_reply_partition,
            security=security,
        )
        stack.push_async_callback(link.stop)
        await link.start()
        self._background.spawn(link.loop())
        owner.on_local = link.deliver
        # A user whose partition this gateway owns is decided here without the round trip
        # through the admission topic; should the partition move first, it is appended.
        link.offer = owner.offer
        owner.append = append_request

        async def send(topic: str, envelope: Envelope) -> None:
            await publish(producer, topic, envelope)

        async def send_default(topic: str, key: bytes, value: bytes) -> None:
            await producer.send_and_wait(topic, key=key, value=value)

        self.api = build_gateway(
            s,
            self.metrics,
            self.view,
            send,
            self.results,
            verifier=self.verifier,
            link=link,
            sse=self.sse,
            webhook_defaults=defaults,
            send_default=send_default,
        )
        self.api.notifiers.chunk_partitions = chunk_partitions
        link.on_late = self.api.admission.late
        stack.push_async_callback(self.api.drain)
        app = build_app(self.api, self.registry, ready=self._ready, info=self._info)
        self.port = await serve_http(app, s.gateway_host, s.gateway_port, stack)
        self._started = True
        log.info("gateway %s up on port %d", self.instance, self.port)

    async def stop(self) -> None:
        if not self._started and not self._background:
            await self._stack.aclose()
            return
        self._started = False
        await self._background.cancel()
        await self._stack.aclose()

    async def _ready(self) -> dict[str, bool]:
        return {
            "kafka_producer": self._producer is not None and self._started,
            "events_view": self._reader is not None and self._reader.ready(),
            "admission_group": self.owner is not None and self.owner.joined.is_set(),
            "background_loops": self._background.healthy(),
        }

    async def _info(self) -> dict[str, bool]:
        return {"results_service": await self.results.reachable()}


def create_service(
    settings: GatewaySettings, *, registry: CollectorRegistry | None = None
) -> GatewayService:
    return GatewayService(settings, registry if registry is not None else CollectorRegistry())
