"""Results service figures over real Kafka and PostgreSQL: sustained write rate, results lag.

Runs the service in-process against a fresh database and fresh topics. Phase 1
pre-publishes a streamer-like backlog (per job: accepted, started, N chunks,
completed) and times how fast it is written. Phase 2, with the service caught
up, publishes more jobs at a steady rate and measures each record's lag from
its Kafka timestamp to the commit of the transaction that wrote it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import time
import uuid
from datetime import timedelta

import asyncpg
from aiokafka import AIOKafkaProducer

from services.results.app import ResultsService, create_service
from services.results.settings import ResultsSettings
from shared.contracts import (
    Envelope,
    JobAccepted,
    JobAcceptedData,
    JobCompleted,
    JobCompletedData,
    JobStarted,
    JobStartedData,
    ModelConfig,
    TokenChunk,
    TokenChunkData,
    TokenUsage,
    utcnow,
)
from shared.kafka import ensure_topics, headers_for
from shared.runtime import tune_collector
from shared.topics import Priority, chunks_topic, events_topic
from tests.bench.figures import Figure, percentile, render

TOKENS_PER_CHUNK = 8


def job_records(prefix: str, chunks_per_job: int) -> list[tuple[str, Envelope]]:
    """One job's records in the order a gateway and a streamer publish them."""
    job_id = str(uuid.uuid4())
    now = utcnow()
    out: list[tuple[str, Envelope]] = [
        (
            events_topic(prefix),
            JobAccepted(
                job_id=job_id,
                data=JobAcceptedData(
                    user_id=f"user-{job_id[:1]}",
                    prompt="Analyse this contract " * 20,
                    job_type="analysis",
                    priority=Priority.NORMAL,
                    config=ModelConfig(max_tokens=chunks_per_job * TOKENS_PER_CHUNK),
                    submitted_at=now,
                ),
            ),
        ),
        (
            events_topic(prefix),
            JobStarted(job_id=job_id, data=JobStartedData(attempt=1, worker="bench")),
        ),
    ]
    text = " token" * TOKENS_PER_CHUNK
    for seq in range(chunks_per_job):
        at = now + timedelta(milliseconds=10 * seq)
        out.append(
            (
                chunks_topic(prefix),
                TokenChunk(
                    job_id=job_id,
                    data=TokenChunkData(
                        attempt=1,
                        seq=seq,
                        text=text,
                        tokens=TOKENS_PER_CHUNK,
                        first_token_at=at,
                        emitted_at=at,
                    ),
                ),
            )
        )
    completion = chunks_per_job * TOKENS_PER_CHUNK
    out.append(
        (
            events_topic(prefix),
            JobCompleted(
                job_id=job_id,
                data=JobCompletedData(
                    attempt=1,
                    response=text * chunks_per_job,
                    finish_reason="stop",
                    model="gpt-4o-mini",
                    usage=TokenUsage(
                        prompt_tokens=100,
                        completion_tokens=completion,
                        total_tokens=100 + completion,
                    ),
                    chunks=chunks_per_job,
                    last_seq=chunks_per_job - 1,
                    time_to_first_token_ms=50,
                    duration_ms=10.0 * chunks_per_job,
                ),
            ),
        )
    )
    return out


async def _send(producer: AIOKafkaProducer, records: list[tuple[str, Envelope]]) -> None:
    futures = [
        await producer.send(
            topic, value=e.to_bytes(), key=e.job_id.encode(), headers=headers_for(e)
        )
        for topic, e in records
    ]
    await asyncio.gather(*futures)


async def _caught_up(service: ResultsService, jobs: int, chunks: int) -> None:
    """Wait until every job has its result and every chunk its row."""
    while True:
        async with service.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM results) AS r, (SELECT count(*) FROM chunks) AS c"
            )
        assert row is not None
        if row["r"] >= jobs and row["c"] >= chunks:
            return
        await asyncio.sleep(0.02)


async def measure(
    bootstrap: str,
    database_url: str,
    *,
    jobs: int,
    chunks_per_job: int,
    paced_records_per_s: float = 4000.0,
    paced_s: float = 4.0,
) -> list[Figure]:
    prefix = f"bres{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, prefix, 4)
    database = f"bench_results_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(database_url)
    await admin.execute(f'CREATE DATABASE "{database}"')
    await admin.close()
    dsn = f"{database_url.rpartition('/')[0]}/{database}"
    lags: list[float] = []
    recording = False
    # Phase 1's commits: (when, records) of each, to time the writing apart from the start.
    drained: list[tuple[float, int]] = []

    def observe(timestamps: list[int], committed_at: float) -> None:
        if recording:
            lags.extend(committed_at - ts / 1000 for ts in timestamps)
        else:
            drained.append((committed_at, len(timestamps)))

    settings = ResultsSettings(
        kafka_bootstrap_servers=bootstrap,
        topic_prefix=prefix,
        database_url=dsn,
        streamjobs_auth_secret="bench-secret-0123456789abcdef0123456789",
        results_port=0,
        results_host="127.0.0.1",
        results_group_id=f"{prefix}-results",
        results_session_timeout_ms=6000,
        results_heartbeat_interval_ms=500,
        log_level="WARNING",
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=512 * 1024
    )
    await producer.start()
    service = create_service(settings, observer=observe)
    thresholds = gc.get_threshold()
    try:
        backlog = [r for _ in range(jobs) for r in job_records(prefix, chunks_per_job)]
        await _send(producer, backlog)
        # The service shares this process: the backlog's objects, left for the collector to
        # scan at every full pass, would slow it as no deployed service is slowed. Its
        # collector is then tuned as the service's own process tunes it at start-up.
        del backlog
        gc.collect()
        tune_collector(settings.gc_young_threshold)
        started = time.perf_counter()
        await service.start()
        await _caught_up(service, jobs, jobs * chunks_per_job)
        drain_s = time.perf_counter() - started

        # Phase 2: a steady load, as streamers would publish it.
        per_job = chunks_per_job + 3
        paced_jobs = max(1, int(paced_records_per_s * paced_s / per_job))
        interval = per_job / paced_records_per_s
        recording = True
        paced_started = time.perf_counter()
        for i in range(paced_jobs):
            await _send(producer, job_records(prefix, chunks_per_job))
            delay = paced_started + (i + 1) * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.wait_for(
            _caught_up(service, jobs + paced_jobs, (jobs + paced_jobs) * chunks_per_job), 120
        )
        offered = paced_jobs * per_job / (time.perf_counter() - paced_started)
        batches = service.persister.batches_written if service.persister else 0
    finally:
        await service.stop()
        await producer.stop()
        gc.set_threshold(*thresholds)
        admin = await asyncpg.connect(database_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()

    records = jobs * (chunks_per_job + 3)
    writing = _writing_rate(drained)
    return [
        Figure(
            "results: records written per second (backlog)",
            writing,
            "records/s",
            ">= 100000",
            f"{jobs} jobs x {chunks_per_job} chunks + 3 events = {records} records in"
            f" {len(drained)} transactions; from the first commit to the last, the records of"
            " all but the first",
        ),
        Figure(
            "results: backlog written, service start included",
            records / drain_s,
            "records/s",
            "-",
            f"{records} records in {drain_s:.2f} s from the service's start (its Kafka clients,"
            " the group join, the pool) to the last row",
        ),
        Figure(
            "results: lifecycle events written per second (backlog)",
            writing * 3 / (chunks_per_job + 3),
            "events/s",
            "-",
        ),
        Figure(
            "results: lag p50, Kafka record -> row committed",
            percentile(lags, 50) * 1000,
            "ms",
            "-",
        ),
        Figure(
            "results: lag p99, Kafka record -> row committed",
            percentile(lags, 99) * 1000,
            "ms",
            "<= 250",
            f"steady load of {offered:.0f} records/s ({paced_jobs} jobs), {batches} batches",
        ),
    ]


def _writing_rate(commits: list[tuple[float, int]]) -> float:
    """Records per second between the first commit and the last (NaN under two commits)."""
    if len(commits) < 2:
        return math.nan
    ordered = sorted(commits)
    span = ordered[-1][0] - ordered[0][0]
    written = sum(n for _, n in ordered[1:])
    return written / span if span > 0 else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bootstrap")
    parser.add_argument("database_url")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--chunks-per-job", type=int, default=25)
    args = parser.parse_args()
    figures = asyncio.run(
        measure(
            args.bootstrap, args.database_url, jobs=args.jobs, chunks_per_job=args.chunks_per_job
        )
    )
    print(render(figures))


if __name__ == "__main__":
    main()
