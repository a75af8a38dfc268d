"""Wiring of the streamer: consumers, use cases, job tasks, producer, ops HTTP."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from datetime import UTC, datetime

from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from prometheus_client import CollectorRegistry

from services.streamer.cancel_matching import CancelMatching
from services.streamer.cancels import Owners, PendingCancels
from services.streamer.capacity import Capacity
from services.streamer.channels import JOB_INTAKE, RETRY_INTAKE
from services.streamer.claims_log import EventsClaims
from services.streamer.control import ControlReader
from services.streamer.delayed import DelayedRetries
from services.streamer.dispatch import RETRY_BAND, Dispatcher
from services.streamer.fence import PriorityFence
from services.streamer.heartbeat import Heartbeat
from services.streamer.inflight import InFlight
from services.streamer.intake import Intake
from services.streamer.job import Deps, RetryPolicy, Running
from services.streamer.lag import report_lag
from services.streamer.looplag import monitor_loop_lag
from services.streamer.metrics import StreamerMetrics
from services.streamer.outcomes import KafkaEvents
from services.streamer.preemption import Preemption
from services.streamer.rejects import Rejects
from services.streamer.reruns import Reruns
from services.streamer.runner import run_job
from services.streamer.scheduler import Scheduler
from services.streamer.settings import StreamerSettings
from services.streamer.sticky import StickyAssignor
from services.streamer.upstreams import Upstreams, build_links
from shared.http import add_ops_routes, serve_http
from shared.instances import StreamerHeartbeat
from shared.jobtypes import load_job_types
from shared.kafka import client_options, ensure_service_topics, make_producer
from shared.runtime import BackgroundTasks, start_or_unwind
from shared.topics import PRIORITY_ORDER, events_topic, instances_topic, job_topic
from shared.upstreams import load as load_registry

log = logging.getLogger(__name__)

LOOP_BACKOFF_S = (0.1, 5.0)  # a consumer loop's wait after a Kafka error: first, longest


class StreamerService:
    def __init__(self, settings: StreamerSettings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = StreamerMetrics(registry)
        self.port = 0
        self.worker = settings.instance_id or f"{socket.gethostname()}:{os.getpid()}"
        self.job_types = load_job_types(settings.streamjobs_workloads_file)
        self.scheduler: Scheduler[Running] = Scheduler(
            settings.streamer_slots, aging_s=settings.streamer_aging_s
        )
        self.delayed = DelayedRetries()
        self.inflight = InFlight()
        self.cancels = PendingCancels(
            capacity=settings.streamer_max_remembered_cancels, ttl_s=settings.streamer_cancel_ttl_s
        )
        self.owners = Owners(capacity=settings.streamer_max_known_owners)
        self._background = BackgroundTasks()
        self._stack = contextlib.AsyncExitStack()
        self._producer: AIOKafkaProducer | None = None
        self._intakes: dict[str, Intake] = {}
        self._control: ControlReader | None = None
        self._started = False
        self.started_at = datetime.now(UTC)

    @property
    def background(self) -> BackgroundTasks:
        return self._background

    @property
    def running(self) -> dict[str, Running]:
        """Jobs in a slot, by id."""
        return self.inflight.running

    async def start(self) -> None:
        await start_or_unwind(self._stack, self._start)

    async def _start(self) -> None:
        s = self.settings
        prefix = s.topic_prefix
        security = client_options(s)
        await ensure_service_topics(s)
        stack = self._stack
        producer = make_producer(
            s.kafka_bootstrap_servers,
            linger_ms=s.streamer_kafka_linger_ms,
            client_id=f"streamer-{self.worker}",
            security=security,
        )
        await producer.start()
        stack.push_async_callback(producer.stop)
        self._producer = producer
        registry = load_registry(s.streamjobs_workloads_file)
        links = build_links(
            registry,
            default_base_url=s.openai_base_url,
            default_api_key=s.openai_api_key.get_secret_value(),
            aiohttp_client=s.streamer_use_aiohttp_client,
            breaker_failures=s.streamer_breaker_failures,
            breaker_cooldown_s=s.streamer_breaker_cooldown_s,
        )
        upstreams = Upstreams(registry, links, self.metrics.breaker_state)
        stack.push_async_callback(upstreams.close)
        self.deps = self._deps(producer, upstreams)
        self._admin = AIOKafkaAdminClient(**security, bootstrap_servers=s.kafka_bootstrap_servers)
        await self._admin.start()
        stack.push_async_callback(self._admin.close)
        # The fence's own client: on the intake's connection its requests would wait
        # behind a long-polling fetch (a broker answers one connection's requests in order).
        self._ends_reader = AIOKafkaConsumer(
            **security,
            bootstrap_servers=s.kafka_bootstrap_servers,
            client_id=f"streamer-fence-{self.worker}",
            enable_auto_commit=False,
            isolation_level="read_committed",  # ends are last stable offsets, as fetched
        )
        await self._ends_reader.start()
        stack.push_async_callback(self._ends_reader.stop)

        first_delay_s = s.streamer_retry_base_s or 0.5
        self.rejects = Rejects(
            producer,
            prefix,
            self.metrics,
            first_delay_s=first_delay_s,
            max_delay_s=s.streamer_retry_max_s or 10.0,
        )
        self._wire_jobs(first_delay_s)
        self._control = ControlReader(
            s.kafka_bootstrap_servers,
            prefix,
            self.cancel_matching.on_cancel,
            self.rejects.reject_control,
            on_kafka_error=self.metrics.loop_errors.labels("control").inc,
            backoff_s=LOOP_BACKOFF_S,
            security=security,
        )
        await self._control.start()
        stack.push_async_callback(self._control.stop)

        prefetch = s.streamer_prefetch or s.streamer_slots
        bands = {job_topic(p, prefix): p.rank for p in PRIORITY_ORDER}
        self._intakes["jobs"] = self._intake(
            "jobs", s.streamer_group_id, JOB_INTAKE.topics(prefix), bands, prefetch
        )
        retry = RETRY_INTAKE.topics(prefix)
        self._intakes["retry"] = self._intake(
            "retry",
            s.streamer_retry_group_id,
            retry,
            dict.fromkeys(retry, RETRY_BAND),
            max(prefetch, 256),
        )
        for intake in self._intakes.values():
            await intake.consumer.start()
            stack.push_async_callback(intake.stop)

        app = web.Application()
        add_ops_routes(app, self.registry, self._ready)
        self.port = await serve_http(app, s.streamer_host, s.streamer_port, stack)

        self._started = True
        stack.push_async_callback(self.fence.close)
        heartbeat = Heartbeat(
            producer,
            instances_topic(prefix),
            self.worker,
            self._heartbeat,
            interval_s=s.streamer_instance_heartbeat_s,
        )
        # Unwound before the producer stops: the tombstone goes out on it.
        stack.push_async_callback(heartbeat.stop)
        self._background.spawn(heartbeat.loop())
        self._background.spawn(self.dispatcher.loop())
        self._background.spawn(
            monitor_loop_lag(s.streamer_loop_lag_interval_ms / 1000, self.dispatcher.loop_lag)
        )
        self._background.spawn(self._control.loop())
        self._background.spawn(self.rejects.control_loop())
        for intake in self._intakes.values():
            self._background.spawn(intake.fetch_loop())
            self._background.spawn(intake.commit_loop())
        self._background.spawn(
            report_lag(self._intakes, self.metrics, prefix, s.streamer_lag_interval_s)
        )
        log.info("streamer %s up: %d slots, port %d", self.worker, s.streamer_slots, self.port)

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self.dispatcher.accepting = False
        # No new jobs: the fetch and dispatch loops go first.
        await self._background.cancel()
        await self.inflight.finish(self.settings.streamer_grace_s)
        await self._flush()
        for intake in self._intakes.values():
            await intake.final_commit()
        await self._stack.aclose()

    async def _flush(self) -> None:
        """Deliver what cut-short attempts sent, before their partitions change hands."""
        if self._producer is not None:
            await self._producer.flush()

    async def _revoke(self, revoked: set[TopicPartition]) -> None:
        # The rebalance callback returns only once these jobs stopped and their records
        # are on the broker: the partitions' next owner starts after it.
        await self.dispatcher.drop_revoked(revoked)
        await self._flush()

    def _on_claims(self, claims: int, events: int, seconds: float) -> None:
        self.metrics.claims_loaded.inc(claims)
        self.metrics.claims_events_read.inc(events)
        self.metrics.claims_read_seconds.observe(seconds)

    def _wire_jobs(self, first_delay_s: float) -> None:
        """The use cases a fetched job passes through: cancel matching, dispatch, reruns."""
        s = self.settings
        events = KafkaEvents(self.deps)
        self.cancel_matching = CancelMatching(
            pending=self.cancels,
            owners=self.owners,
            inflight=self.inflight,
            scheduler=self.scheduler,
            delayed=self.delayed,
            events=events,
            ledgers=self._intakes,
            metrics=self.metrics,
            retry_delays_s=(first_delay_s, s.streamer_retry_max_s or 10.0),
        )
        deps = self.deps
        self.fence = PriorityFence(
            bands=lambda: self._intakes["jobs"].bands() if "jobs" in self._intakes else {},
            seen=lambda tp: self._intakes["jobs"].seen(tp),
            end_offsets=self._ends_reader.end_offsets,
            waiting=self.scheduler.waiting,
            on_check=self.metrics.fence_checks.inc,
        )
        self.dispatcher = Dispatcher(
            scheduler=self.scheduler,
            delayed=self.delayed,
            inflight=self.inflight,
            cancels=self.cancel_matching,
            reruns=Reruns(
                self._admin.list_topics, delays_s=(first_delay_s, s.streamer_retry_max_s)
            ),
            run_attempt=lambda running: run_job(running, deps),
            events=events,
            ledgers=self._intakes,
            metrics=self.metrics,
            capacity=Capacity(
                s.streamer_max_loop_lag_ms / 1000,
                s.streamer_resume_loop_lag_ms / 1000,
                s.streamer_loop_lag_window_s,
                s.streamer_loop_lag_recover_ms / 1000,
            ),
            fence=self.fence,
            preemption=Preemption.of(s.streamer_preempt, s.streamer_max_attempts),
        )

    def _deps(self, producer: AIOKafkaProducer, upstreams: Upstreams) -> Deps:
        s = self.settings
        return Deps(
            producer=producer,
            upstreams=upstreams,
            metrics=self.metrics,
            retry=RetryPolicy(
                max_attempts=s.streamer_max_attempts,
                base_s=s.streamer_retry_base_s,
                max_s=s.streamer_retry_max_s,
            ),
            prefix=s.topic_prefix,
            worker=self.worker,
            window_ms=s.streamer_chunk_window_ms,
            max_tokens=s.streamer_chunk_max_tokens,
            job_timeout_s=s.streamer_job_timeout_s,
            idle_timeout_s=s.streamer_idle_timeout_s,
            job_types=self.job_types,
        )

    def _intake(
        self, name: str, group: str, topics: list[str], bands: dict[str, int], prefetch: int
    ) -> Intake:
        s = self.settings
        # Told what the intake holds once it exists; consulted only at a join.
        assignor = StickyAssignor(set) if s.streamer_sticky_assignment else None
        consumer = AIOKafkaConsumer(
            **client_options(s),
            bootstrap_servers=s.kafka_bootstrap_servers,
            group_id=group,
            client_id=f"streamer-{name}-{self.worker}",
            enable_auto_commit=False,
            # A job admitted in a transaction that aborted was never admitted.
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            session_timeout_ms=s.streamer_session_timeout_ms,
            heartbeat_interval_ms=s.streamer_heartbeat_interval_ms,
            # A read_committed fetch parked on an empty partition can miss a commit until
            # its wait runs out; a short wait bounds how late a burst of jobs is seen.
            fetch_max_wait_ms=s.streamer_fetch_max_wait_ms,
            # Round robin only while a member of an earlier version is in the group.
            partition_assignment_strategy=(
                (assignor, RoundRobinPartitionAssignor)
                if assignor is not None
                else (RoundRobinPartitionAssignor,)
            ),
            # Jobs run long, but the fetch loop keeps polling, so the default poll bound holds.
        )
        intake = Intake(
            name,
            consumer,
            topics,
            rank_of_topic=lambda _topic, job: job.data.priority.rank,
            offer=self.dispatcher.admit,
            dead_letter=self.rejects.reject_job,
            backlog=self.dispatcher.backlog,
            prefetch=prefetch,
            on_revoke=self._revoke,
            admin=self._admin,
            group_id=group,
            claims_source=EventsClaims(
                options={**client_options(s), "bootstrap_servers": s.kafka_bootstrap_servers},
                topic=events_topic(s.topic_prefix),
                margin_s=s.streamer_claims_margin_s,
                timeout_s=s.streamer_claims_timeout_s,
            ),
            on_claims=self._on_claims,
            assignor=assignor,
            running_partitions=self.inflight.partitions,
            on_kept=self.metrics.jobs_kept_by_rebalance.inc,
            max_delay_s=s.streamer_max_not_before_s,
            accept_skew_s=s.streamer_accept_skew_s,
            on_late=self.metrics.jobs_appended_late.inc,
            on_kafka_error=self.metrics.loop_errors.labels(f"intake_{name}").inc,
            backoff_s=LOOP_BACKOFF_S,
            held_back=self.dispatcher.holds_back,
            on_progress=self.fence.progressed if name == "jobs" else lambda: None,
        )
        if assignor is not None:
            assignor.held = intake.held
        intake.subscribe(bands)
        return intake

    def _heartbeat(self, now: datetime) -> StreamerHeartbeat:
        assigned = (
            f"{tp.topic}:{tp.partition}"
            for intake in self._intakes.values()
            for tp in intake.consumer.assignment()
        )
        return StreamerHeartbeat(
            instance_id=self.worker,
            host=socket.gethostname(),
            pid=os.getpid(),
            slots_total=self.scheduler.slots,
            slots_in_use=self.scheduler.in_use,
            jobs_running=len(self.running),
            jobs_waiting=self.scheduler.waiting(),
            partitions=sorted(assigned),
            loop_lag_ms=self.dispatcher.capacity.p99() * 1000,
            overloaded=self.dispatcher.capacity.overloaded,
            started_at=self.started_at,
            sent_at=now,
            interval_s=self.settings.streamer_instance_heartbeat_s,
        )

    async def _ready(self) -> dict[str, bool]:
        producer_ok = self._producer is not None and self._started
        return {
            "kafka_producer": producer_ok,
            "jobs_consumer": "jobs" in self._intakes and self._intakes["jobs"].ready(),
            "control_consumer": self._control is not None and self._control.ready(),
            "background_loops": self._background.healthy(),
        }


def create_service(
    settings: StreamerSettings, *, registry: CollectorRegistry | None = None
) -> StreamerService:
    return StreamerService(settings, registry if registry is not None else CollectorRegistry())
