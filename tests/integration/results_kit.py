"""Helpers for the results service's tests: a running service, streamer-like records, HTTP."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
from aiokafka import AIOKafkaProducer, TopicPartition

from services.results.app import ResultsService, create_service
from services.results.settings import ResultsSettings
from shared.auth import issue_token
from shared.contracts import (
    JobAccepted,
    JobAcceptedData,
    JobCancelled,
    JobCancelledData,
    JobCompleted,
    JobCompletedData,
    JobFailed,
    JobFailedData,
    JobRetrying,
    JobRetryingData,
    JobStarted,
    JobStartedData,
    LifecycleEvent,
    ModelConfig,
    TokenChunk,
    TokenChunkData,
    TokenUsage,
)
from shared.kafka import publish
from shared.topics import Priority, chunks_topic, events_topic

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def settings_for(
    bootstrap: str, prefix: str, database_url: str, secret: str, **overrides: Any
) -> ResultsSettings:
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": bootstrap,
        "topic_prefix": prefix,
        "database_url": database_url,
        "streamjobs_auth_secret": secret,
        "results_port": 0,
        "results_host": "127.0.0.1",
        "results_group_id": f"{prefix}-results",
        "results_batch_delay_ms": 20,
        "results_session_timeout_ms": 6000,
        "results_heartbeat_interval_ms": 500,
        "results_retry_base_s": 0.1,
        "results_retry_max_s": 0.5,
        "log_json": False,
        **overrides,
    }
    return ResultsSettings(**values)


@asynccontextmanager
async def running(settings: ResultsSettings, **kwargs: Any) -> AsyncIterator[ResultsService]:
    service = create_service(settings, **kwargs)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def caught_up(service: ResultsService) -> bool:
    """Every assigned partition's offset is committed up to its end."""
    consumer = service._consumer
    assert consumer is not None
    assigned: set[TopicPartition] = consumer.assignment()
    if not assigned:
        return False
    ends = await consumer.end_offsets(list(assigned))
    for tp in assigned:
        if (await consumer.committed(tp) or 0) < ends[tp]:
            return False
    return True


@dataclass
class JobScript:
    """The records one job's life puts on the events and chunks topics."""

    events: list[LifecycleEvent]
    chunks: list[TokenChunk]

    @property
    def accepted(self) -> JobAccepted:
        first = self.events[0]
        assert isinstance(first, JobAccepted)
        return first


def job_script(
    job_id: str | None = None,
    *,
    user: str = "alice",
    job_type: str = "analysis",
    priority: Priority = Priority.NORMAL,
    model: str = "gpt-4o-mini",
    max_tokens: int = 100,
    submitted_at: datetime = T0,
    queued_ms: float = 50.0,
    texts: tuple[str, ...] = ("Hello", " world"),
    response: str | None = None,
    outcome: str = "completed",
    prompt_tokens: int = 10,
    ttft_ms: float = 100.0,
    duration_ms: float = 1000.0,
    error_type: str = "UpstreamServerError",
    retries: int = 0,
    metadata: dict[str, Any] | None = None,
) -> JobScript:
    job_id = job_id or uuid.uuid4().hex
    events: list[LifecycleEvent] = [
        JobAccepted(
            job_id=job_id,
            occurred_at=submitted_at,
            data=JobAcceptedData(
                user_id=user,
                prompt="Analyse this",
                job_type=job_type,
                priority=priority,
                config=ModelConfig(model=model, max_tokens=max_tokens),
                metadata=metadata or {},
                submitted_at=submitted_at,
            ),
        )
    ]
    if outcome == "queued":
        return JobScript(events, [])
    started_at = submitted_at + timedelta(milliseconds=queued_ms)
    if outcome == "cancelled-queued":
        events.append(
            JobCancelled(job_id=job_id, occurred_at=started_at, data=JobCancelledData(attempt=1))
        )
        return JobScript(events, [])
    attempt = 1
    for _ in range(retries):
        events.append(
            JobStarted(
                job_id=job_id,
                occurred_at=started_at,
                data=JobStartedData(attempt=attempt, worker="w", queued_for_ms=queued_ms),
            )
        )
        events.append(
            JobRetrying(
                job_id=job_id,
                occurred_at=started_at,
                data=JobRetryingData(
                    attempt=attempt, next_attempt=attempt + 1, reason="x", retry_at=started_at
                ),
            )
        )
        attempt += 1
    events.append(
        JobStarted(
            job_id=job_id,
            occurred_at=started_at,
            data=JobStartedData(attempt=attempt, worker="w", queued_for_ms=queued_ms),
        )
    )
    chunks = [
        TokenChunk(
            job_id=job_id,
            data=TokenChunkData(
                attempt=attempt,
                seq=seq,
                text=text,
                tokens=1,
                first_token_at=started_at + timedelta(milliseconds=ttft_ms),
                emitted_at=started_at + timedelta(milliseconds=ttft_ms),
            ),
        )
        for seq, text in enumerate(texts)
    ]
    if outcome == "running":
        return JobScript(events, chunks)
    finished_at = started_at + timedelta(milliseconds=duration_ms)
    if outcome == "completed":
        events.append(
            JobCompleted(
                job_id=job_id,
                occurred_at=finished_at,
                data=JobCompletedData(
                    attempt=attempt,
                    response=response if response is not None else "".join(texts),
                    finish_reason="stop",
                    model=model,
                    usage=TokenUsage(
                        prompt_tokens=prompt_tokens,
                        completion_tokens=len(texts),
                        total_tokens=prompt_tokens + len(texts),
                    ),
                    chunks=len(texts),
                    last_seq=len(texts) - 1,
                    time_to_first_token_ms=ttft_ms,
                    duration_ms=duration_ms,
                ),
            )
        )
    elif outcome == "failed":
        events.append(
            JobFailed(
                job_id=job_id,
                occurred_at=finished_at,
                data=JobFailedData(
                    attempt=attempt, reason="server_error: 500", error_type=error_type
                ),
            )
        )
    elif outcome == "cancelled":
        events.append(
            JobCancelled(
                job_id=job_id,
                occurred_at=finished_at,
                data=JobCancelledData(attempt=attempt, last_seq=len(texts) - 1),
            )
        )
    return JobScript(events, chunks)


async def publish_script(producer: AIOKafkaProducer, prefix: str, script: JobScript) -> None:
    for event in script.events:
        await publish(producer, events_topic(prefix), event)
    for chunk in script.chunks:
        await publish(producer, chunks_topic(prefix), chunk)


async def count(database_url: str, sql: str, *args: Any) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval(sql, *args))
    finally:
        await conn.close()


class Reader:
    """An HTTP client of the read API with one user's token."""

    def __init__(
        self, http: aiohttp.ClientSession, base: str, secret: str, user: str, *scopes: str
    ):
        self.http = http
        self.base = base
        self.headers = {
            "Authorization": f"Bearer {issue_token(secret, user, scopes or ('jobs:read',))}"
        }

    async def get(self, path: str, **params: Any) -> tuple[int, Any]:
        async with self.http.get(
            f"{self.base}/api/v1{path}", headers=self.headers, params=params
        ) as resp:
            return resp.status, await resp.json(content_type=None)
