"""200 jobs on one partition, the streamer killed and restarted, an upstream that answers
differently on every call: each rerun is a new attempt, and no client and no stored result
holds text of two runs under one attempt number."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from deploy.localstack.stack import Stack
from shared.auth import issue_token
from shared.contracts import JobCompleted, JobStarted
from shared.topics import chunks_topic
from tests.e2e.conftest import running_system
from tests.e2e.test_pipeline import follow, stored_result
from tests.integration.test_streamer_rebalance import FINAL_TYPES, all_final, events_when
from tests.integration.test_streamer_streaming import read_topic, records_of

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]

JOBS = 200
WATCHED = 5  # jobs a WebSocket client follows from the first chunk to the end
# Eight seconds each, a different text on every upstream call, like a real model.
PROMPT = "Rerun {i} [[sim tokens=80 tps=10 vary=1]]"


@pytest.fixture
def one_partition(
    kafka_bootstrap: str, database_url: str, topic_prefix: str, test_state_dir: Path
) -> Iterator[Stack]:
    env = {
        "JOB_PARTITIONS": "1",  # every job on the one partition the streamer owns
        "GATEWAY_MAX_IN_FLIGHT": "0",
        "GATEWAY_SUBMISSIONS_PER_MINUTE": "0",
        "STREAMER_SLOTS": str(JOBS + 16),  # all of them running when the streamer dies
        "STREAMER_CHUNK_WINDOW_MS": "500",
        "STREAMER_SESSION_TIMEOUT_MS": "6000",
        "STREAMER_HEARTBEAT_INTERVAL_MS": "500",
    }
    with running_system(
        test_state_dir, kafka_bootstrap, database_url, topic_prefix=topic_prefix, env=env
    ) as stack:
        yield stack


async def submit_all(base: str, token: str) -> list[str]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:

        async def one(i: int) -> str:
            body = {"prompt": PROMPT.format(i=i)}
            async with http.post(f"{base}/api/v1/jobs", json=body) as resp:
                payload = await resp.json()
                assert resp.status == 202, payload
                return str(payload["job_id"])

        return list(await asyncio.gather(*(one(i) for i in range(JOBS))))


def texts_by_attempt(chunks: list[Any]) -> dict[tuple[str, int], dict[int, str]]:
    """(job, attempt) -> seq -> text; a seq seen twice is two runs under one attempt."""
    out: dict[tuple[str, int], dict[int, str]] = defaultdict(dict)
    for chunk in chunks:
        run = out[chunk.job_id, chunk.data.attempt]
        assert chunk.data.seq not in run, f"{chunk.job_id} attempt {chunk.data.attempt} ran twice"
        run[chunk.data.seq] = chunk.data.text
    return out


async def test_a_killed_streamers_200_jobs_on_one_partition_rerun_as_new_attempts_unmixed(
    one_partition: Stack, kafka_bootstrap: str, topic_prefix: str, database_url: str
) -> None:
    system = one_partition
    urls = system.urls()
    token = issue_token(system.auth_secret(), "alice")
    job_ids = await submit_all(urls["gateway"], token)
    watchers = {
        job_id: asyncio.create_task(follow(urls["notifier_ws"], token, job_id))
        for job_id in job_ids[:WATCHED]
    }

    def all_started(events: list[Any]) -> bool:
        return set(job_ids) <= {e.job_id for e in events if isinstance(e, JobStarted)}

    before = await events_when(kafka_bootstrap, topic_prefix, all_started, timeout=40)
    system.processes["streamer"].kill()  # SIGKILL: no revocation, no commit
    killed_at = time.time()
    settled = {e.job_id for e in before if e.type in FINAL_TYPES}
    assert len(settled) < JOBS // 2, "too few jobs were running at the kill to prove anything"
    await asyncio.to_thread(system.start_service, "streamer")

    events = await events_when(kafka_bootstrap, topic_prefix, all_final(job_ids), timeout=75)
    mine = [e for e in events if e.job_id in set(job_ids)]
    completed = {e.job_id: e for e in mine if isinstance(e, JobCompleted)}
    assert set(completed) == set(job_ids), "a job did not complete"
    for job_id in set(job_ids) - settled:
        attempts = [
            e.data.attempt for e in mine if isinstance(e, JobStarted) and e.job_id == job_id
        ]
        assert len(attempts) == len(set(attempts)), f"{job_id}: attempts {attempts} reused one"
        first_run = [
            e.data.attempt
            for e in mine
            if isinstance(e, JobStarted)
            and e.job_id == job_id
            and e.occurred_at.timestamp() < killed_at
        ]
        assert completed[job_id].data.attempt > max(first_run), f"{job_id} reran as {attempts}"

    wanted = sum(c.data.chunks for c in completed.values())

    def final_chunks(values: list[bytes]) -> int:
        done = completed
        return sum(
            1
            for c in records_of(values)
            if c.job_id in done and c.data.attempt == done[c.job_id].data.attempt
        )

    values = await read_topic(
        kafka_bootstrap, chunks_topic(topic_prefix), until=lambda vs: final_chunks(vs) >= wanted
    )
    streamed = texts_by_attempt([c for c in records_of(values) if c.job_id in completed])
    for job_id, done in completed.items():
        final = streamed[job_id, done.data.attempt]
        assert sorted(final) == list(range(done.data.chunks))
        assert "".join(final[seq] for seq in sorted(final)) == done.data.response

    for job_id, watcher in watchers.items():
        frames, _ = await watcher
        seen: dict[tuple[int, int], str] = {}
        for frame in frames:
            key = (frame["attempt"], frame["seq"])
            assert key not in seen, f"a client got attempt {key[0]} seq {key[1]} twice"
            seen[key] = frame["text"]
        for (attempt, seq), text in seen.items():
            assert streamed[job_id, attempt][seq] == text, "a client holds text of another run"
        last = completed[job_id].data
        assert "".join(seen[last.attempt, s] for s in range(last.chunks)) == last.response

    for job_id, done in completed.items():
        result = await stored_result(urls["gateway"], token, job_id)
        assert result["response"] == done.data.response
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT job_id, attempt, seq, text FROM chunks WHERE job_id = ANY($1::text[])",
            job_ids,
        )
    finally:
        await conn.close()
    assert rows, "no chunk was stored"
    for row in rows:
        run = streamed[row["job_id"], row["attempt"]]
        assert run[row["seq"]] == row["text"], "a stored chunk holds text of another run"
