"""Wiring of the streamer: consumers, scheduler, job tasks, producer, ops HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import socket
import time
from collections.abc import Coroutine
from typing import Any

import openai
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from services.streamer.breaker import CircuitBreaker
from services.streamer.cancels import Owners, PendingCancels, may_cancel
from services.streamer.control import ControlReader
from services.streamer.intake import Intake
from services.streamer.job import Deps, RetryPolicy, Running
from services.streamer.metrics import StreamerMetrics
from services.streamer.outcomes import failed, publish_cancelled
from services.streamer.rejects import Rejects
from services.streamer.runner import run_job
from services.streamer.scheduler import Scheduler
from services.streamer.settings import StreamerSettings
from services.streamer.upstream import InternalError, make_client
from shared.contracts import CancelJobData, RunJob
from shared.http import add_ops_routes, serve_http
from shared.kafka import client_options, ensure_topics, make_producer
from shared.retry import retry_until_done
from shared.runtime import BackgroundTasks, start_or_unwind
from shared.topics import PRIORITY_ORDER, job_topic, retry_topic

log = logging.getLogger(__name__)

RETRY_BAND = -1  # pseudo band of the retry topic's partitions, for pausing
LOOP_BACKOFF_S = (0.1, 5.0)  # a consumer loop's wait after a Kafka error: first, longest


class StreamerService:
    def __init__(self, settings: StreamerSettings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = StreamerMetrics(registry)
        self.port = 0
        self.worker = settings.instance_id or f"{socket.gethostname()}:{os.getpid()}"
        self.scheduler: Scheduler[Running] = Scheduler(
            settings.streamer_slots, aging_s=settings.streamer_aging_s
        )
        self.cancels = PendingCancels(
            capacity=settings.streamer_max_remembered_cancels, ttl_s=settings.streamer_cancel_ttl_s
        )
        self.owners = Owners(capacity=settings.streamer_max_known_owners)
        self.running: dict[str, Running] = {}
        self._delayed: list[tuple[float, int, Running, int]] = []  # (due, n, job, rank)
        self._counter = itertools.count()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._background = BackgroundTasks()
        self._stack = contextlib.AsyncExitStack()
        self._producer: AIOKafkaProducer | None = None
        self._intakes: dict[str, Intake] = {}
        self._control: ControlReader | None = None
        self._accepting = False
        self._started = False

    @property
    def background(self) -> BackgroundTasks:
        return self._background

    async def start(self) -> None:
        await start_or_unwind(self._stack, self._start)

    async def _start(self) -> None:
        s = self.settings
        prefix = s.topic_prefix
        security = client_options(s)
        await ensure_topics(s.kafka_bootstrap_servers, prefix, s.job_partitions, security=security)
        stack = self._stack
        producer = make_producer(
            s.kafka_bootstrap_servers, client_id=f"streamer-{self.worker}", security=security
        )
        await producer.start()
        stack.push_async_callback(producer.stop)
        self._producer = producer
        client = make_client(
            s.openai_base_url,
            s.openai_api_key.get_secret_value(),
            aiohttp_client=s.streamer_use_aiohttp_client,
        )
        stack.push_async_callback(client.close)
        self.deps = self._deps(producer, client)
        self._admin = AIOKafkaAdminClient(**security, bootstrap_servers=s.kafka_bootstrap_servers)
        await self._admin.start()
        stack.push_async_callback(self._admin.close)

        self.rejects = Rejects(
            producer,
            prefix,
            self.metrics,
            first_delay_s=s.streamer_retry_base_s or 0.5,
            max_delay_s=s.streamer_retry_max_s or 10.0,
        )
        self._control = ControlReader(
            s.kafka_bootstrap_servers,
            prefix,
            self._on_cancel,
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
            "jobs", s.streamer_group_id, list(bands), bands, prefetch
        )
        self._intakes["retry"] = self._intake(
            "retry",
            s.streamer_retry_group_id,
            [retry_topic(prefix)],
            {retry_topic(prefix): RETRY_BAND},
            max(prefetch, 256),
        )
        for intake in self._intakes.values():
            await intake.consumer.start()
            stack.push_async_callback(intake.consumer.stop)

        app = web.Application()
        add_ops_routes(app, self.registry, self._ready)
        self.port = await serve_http(app, s.streamer_host, s.streamer_port, stack)

        self._accepting = True
        self._started = True
        self._background.spawn(self._dispatch_loop())
        self._background.spawn(self._control.loop())
        self._background.spawn(self.rejects.control_loop())
        for intake in self._intakes.values():
            self._background.spawn(intake.fetch_loop())
            self._background.spawn(intake.commit_loop())
        self._background.spawn(self._lag_loop())
        log.info("streamer %s up: %d slots, port %d", self.worker, s.streamer_slots, self.port)

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self._accepting = False
        # No new jobs: the fetch and dispatch loops go first.
        await self._background.cancel()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=self.settings.streamer_grace_s)
            # Cut short: no final event and no commit, so another instance runs them again.
            for task in late:
                task.cancel()
            for task in late:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for intake in self._intakes.values():
            await intake.final_commit()
        await self._stack.aclose()

    async def _lag_loop(self) -> None:
        bands = {job_topic(p, self.settings.topic_prefix): p.value for p in PRIORITY_ORDER}
        bands[retry_topic(self.settings.topic_prefix)] = "retry"
        while True:
            for intake in self._intakes.values():
                try:
                    lags = await intake.lag()
                except KafkaError as exc:  # a rebalance in progress: next round
                    log.debug("lag not available: %r", exc)
                    continue
                for topic, lag in lags.items():
                    self.metrics.consumer_lag.labels(topic, bands.get(topic, "")).set(lag)
            await asyncio.sleep(self.settings.streamer_lag_interval_s)

    def _deps(self, producer: AIOKafkaProducer, client: openai.AsyncOpenAI) -> Deps:
        s = self.settings
        return Deps(
            producer=producer,
            client=client,
            metrics=self.metrics,
            breaker=CircuitBreaker(
                failure_threshold=s.streamer_breaker_failures,
                cooldown_s=s.streamer_breaker_cooldown_s,
            ),
            retry=RetryPolicy(
                max_attempts=s.streamer_max_attempts,
                base_s=s.streamer_retry_base_s,
                max_s=s.streamer_retry_max_s,
            ),
            prefix=s.topic_prefix,
            worker=self.worker,
            upstream=s.openai_base_url,
            window_ms=s.streamer_chunk_window_ms,
            max_tokens=s.streamer_chunk_max_tokens,
            job_timeout_s=s.streamer_job_timeout_s,
            idle_timeout_s=s.streamer_idle_timeout_s,
        )

    def _intake(
        self, name: str, group: str, topics: list[str], bands: dict[str, int], prefetch: int
    ) -> Intake:
        s = self.settings
        consumer = AIOKafkaConsumer(
            **client_options(s),
            bootstrap_servers=s.kafka_bootstrap_servers,
            group_id=group,
            client_id=f"streamer-{name}-{self.worker}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=s.streamer_session_timeout_ms,
            heartbeat_interval_ms=s.streamer_heartbeat_interval_ms,
            # Jobs run long, but the fetch loop keeps polling, so the default poll bound holds.
        )
        intake = Intake(
            name,
            consumer,
            topics,
            rank_of_topic=lambda _topic, job: job.data.priority.rank,
            offer=self._offer,
            dead_letter=self.rejects.reject_job,
            backlog=self._backlog,
            prefetch=prefetch,
            on_revoke=self._drop_revoked,
            admin=self._admin,
            group_id=group,
            max_delay_s=s.streamer_max_not_before_s,
            on_kafka_error=self.metrics.loop_errors.labels(f"intake_{name}").inc,
            backoff_s=LOOP_BACKOFF_S,
        )
        intake.subscribe(bands)
        return intake

    async def _ready(self) -> dict[str, bool]:
        producer_ok = self._producer is not None and self._started
        return {
            "kafka_producer": producer_ok,
            "jobs_consumer": "jobs" in self._intakes and self._intakes["jobs"].ready(),
            "control_consumer": self._control is not None and self._control.ready(),
            "background_loops": self._background.healthy(),
        }

    def _backlog(self, rank: int) -> int:
        if rank == RETRY_BAND:
            return len(self._delayed)
        return self.scheduler.waiting(rank)

    def _offer(self, running: Running, rank: int) -> None:
        now = time.monotonic()
        job = running.job
        running.owner = self.owners.record(job.job_id, job.data.user_id)
        if running.owner != job.data.user_id:
            log.warning(
                "job %s claims owner %s; its first record said %s, who alone may cancel it",
                job.job_id,
                job.data.user_id,
                running.owner,
            )
        pending = self._take_cancel(running, now)
        if pending is not None:
            # Cancelled before it was fetched: skip it now, without waiting for a slot.
            running.cancel = pending
            self._track(self._skip_cancelled(running))
            return
        if running.due > now:
            heapq.heappush(self._delayed, (running.due, next(self._counter), running, rank))
        else:
            self.scheduler.offer(running, rank, now)
        self.metrics.jobs_waiting.set(self.scheduler.waiting())
        self._wake.set()

    def _drop_revoked(self, revoked: set[TopicPartition]) -> None:
        self.scheduler.drop(lambda r: r.tp in revoked)
        self._delayed = [d for d in self._delayed if d[2].tp not in revoked]
        heapq.heapify(self._delayed)

    async def _dispatch_loop(self) -> None:
        while True:
            timeout = None
            if self._delayed:
                timeout = max(0.0, self._delayed[0][0] - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            now = time.monotonic()
            while self._delayed and self._delayed[0][0] <= now:
                _, _, running, rank = heapq.heappop(self._delayed)
                self.scheduler.offer(running, rank, now)
            while self._accepting and (waiting := self.scheduler.take(now)) is not None:
                self._launch(waiting.item, now)
            self.metrics.slots_in_use.set(self.scheduler.in_use)
            self.metrics.jobs_waiting.set(self.scheduler.waiting())

    def _launch(self, running: Running, now: float) -> None:
        job = running.job
        pending = self._take_cancel(running, now)
        if pending is not None:
            running.cancel = pending
        self.running[job.job_id] = running
        if running.tp is not None and running.cancel is None:
            self._intakes[running.source].started(
                running.tp, running.offset, job.job_id, job.data.attempt
            )
        self._track(self._run(running))

    async def _run(self, running: Running) -> None:
        job = running.job
        lost = False
        try:
            try:
                await run_job(running, self.deps)
            except KafkaError:
                raise
            except Exception as exc:  # a process boundary: one job's bug must not stop us
                log.exception("attempt %d crashed", job.data.attempt)
                streamed = running.stream.streamed() if running.stream is not None else None
                await failed(
                    self.deps, job, InternalError(repr(exc)), _labels(job), time.time(), streamed
                )
        except asyncio.CancelledError:
            raise  # shutdown: neither final event nor commit
        except KafkaError as exc:
            # Kafka failed under the attempt: nothing final was said, so the offset stays
            # in flight and the job runs again here, as the next attempt, once Kafka answers.
            log.warning("attempt %d lost to Kafka (%r); it runs again", job.data.attempt, exc)
            self.metrics.attempts_lost_to_kafka.inc()
            lost = True
        finally:
            self.running.pop(job.job_id, None)
            self.scheduler.release()
            self._wake.set()
        if lost:
            self._track(self._rerun_when_kafka_answers(running))
            return
        if running.tp is not None:
            self._intakes[running.source].done(running.tp, running.offset)

    def _track(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a job's coroutine as a task that stop() waits for within the grace period."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_crash)

    async def _rerun_when_kafka_answers(self, running: Running) -> None:
        """Offer a job whose attempt Kafka lost again, as the next attempt, once Kafka answers.

        Waiting first keeps an outage from burning the job's attempts one after another.
        """
        await retry_until_done(
            self._admin.list_topics,
            (KafkaError,),
            what="reaching Kafka",
            first_delay_s=self.settings.streamer_retry_base_s or 0.5,
            max_delay_s=self.settings.streamer_retry_max_s,
        )
        job = running.job
        data = job.data.model_copy(update={"attempt": job.data.attempt + 1})
        again = Running(
            job=job.model_copy(update={"data": data}),
            source=running.source,
            tp=running.tp,
            offset=running.offset,
            owner=running.owner,
        )
        self._offer(again, data.priority.rank)

    def _take_cancel(self, running: Running, now: float) -> CancelJobData | None:
        pending = self.cancels.take(running.job.job_id, running.owner, now)
        self.metrics.cancels_remembered.set(len(self.cancels))
        return pending

    def _on_cancel(self, job_id: str, cancel: CancelJobData) -> None:
        running = self.running.get(job_id)
        owner = running.owner if running is not None else self.owners.get(job_id)
        if owner is not None and not may_cancel(cancel, owner):
            self.metrics.cancels_ignored.inc()
            log.warning("ignored a cancel of job %s by user %s", job_id, cancel.user_id)
        elif running is not None:
            running.request_cancel(cancel)
        elif not self._cancel_waiting(job_id, cancel):
            # Not fetched yet (or owned by another instance): applied when it starts.
            evicted = self.cancels.remember(job_id, cancel, time.monotonic())
            self.metrics.cancels_evicted.inc(evicted)
            self.metrics.cancels_remembered.set(len(self.cancels))

    def _cancel_waiting(self, job_id: str, cancel: CancelJobData) -> bool:
        """Cancel a job fetched but waiting for a slot (or a retry) at once, without a slot."""

        def matches(r: Running) -> bool:
            return r.job.job_id == job_id and may_cancel(cancel, r.owner)

        dropped = self.scheduler.drop(matches)
        delayed = [d for d in self._delayed if matches(d[2])]
        if delayed:
            self._delayed = [d for d in self._delayed if not matches(d[2])]
            heapq.heapify(self._delayed)
            dropped.extend(d[2] for d in delayed)
        for waiting in dropped:
            waiting.cancel = cancel
            self._track(self._skip_cancelled(waiting))
        if dropped:
            self.metrics.jobs_waiting.set(self.scheduler.waiting())
        return bool(dropped)

    async def _skip_cancelled(self, waiting: Running) -> None:
        """Publish the cancelled event of a job that never started, then release its offset."""
        assert waiting.cancel is not None
        data = waiting.job.data
        cancel = waiting.cancel
        # Retried until written: its offset stays uncommitted until the event is out.
        await retry_until_done(
            lambda: publish_cancelled(self.deps, waiting.job, cancel),
            (KafkaError,),
            what="publishing a cancel",
            first_delay_s=self.settings.streamer_retry_base_s or 0.5,
            max_delay_s=self.settings.streamer_retry_max_s or 10.0,
            log_extra={"job_id": waiting.job.job_id},
        )
        self.metrics.jobs_cancelled.labels(data.job_type, data.priority.value).inc()
        if waiting.tp is not None:
            self._intakes[waiting.source].done(waiting.tp, waiting.offset)


def create_service(
    settings: StreamerSettings, *, registry: CollectorRegistry | None = None
) -> StreamerService:
    return StreamerService(settings, registry if registry is not None else CollectorRegistry())


def _labels(job: RunJob) -> tuple[str, str]:
    return job.data.job_type, job.data.priority.value


def _log_crash(task: asyncio.Task[None]) -> None:
    """A job task's unexpected error is logged at once, not when the task is collected.

    Its offset stays uncommitted, so the job runs again after a restart or rebalance.
    """
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("a job task crashed: %r", exc, exc_info=exc)
