"""Retrying failed and cancelled jobs through the public API, over the whole running system:
a new job with the same inputs, through the normal admission, linked both ways."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from deploy.localstack.stack import Stack
from shared.auth import DEFAULT_SCOPES, SCOPE_ADMIN, SCOPE_READ, SCOPE_WRITE, issue_token
from tests.e2e.conftest import running_system
from tests.e2e.test_pipeline import stored_result, submit
from tests.support import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]


@pytest.fixture
def system(
    kafka_bootstrap: str, database_url: str, topic_prefix: str, test_state_dir: Path
) -> Iterator[Stack]:
    """One attempt per job: a fault of the first upstream call fails the job for good, and
    its retry, a new job, makes the next call."""
    with running_system(
        test_state_dir,
        kafka_bootstrap,
        database_url,
        topic_prefix=topic_prefix,
        env={"STREAMER_MAX_ATTEMPTS": "1"},
    ) as stack:
        yield stack


async def call(
    method: str, url: str, token: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], CIMultiDictProxy[str]]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, url, headers={"Authorization": f"Bearer {token}", **(headers or {})}
        ) as resp,
    ):
        return resp.status, await resp.json(content_type=None), resp.headers


async def retry(
    base: str, token: str, job_id: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], CIMultiDictProxy[str]]:
    return await call("POST", f"{base}/api/v1/jobs/{job_id}/retry", token, headers)


async def job(base: str, token: str, job_id: str) -> dict[str, Any]:
    status, body, _ = await call("GET", f"{base}/api/v1/jobs/{job_id}", token)
    assert status == 200, body
    return body


async def job_when(base: str, token: str, job_id: str, status: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        code, body, _ = await call("GET", f"{base}/api/v1/jobs/{job_id}", token)
        return body if code == 200 and body["status"] == status else None

    return await wait_for(probe, timeout=30, interval=0.2, message=f"job {job_id} is {status}")


async def test_a_failed_job_retried_runs_again_with_the_same_inputs_as_a_new_job(
    system: Stack, user_token: str
) -> None:
    base = system.urls()["gateway"]
    body: dict[str, Any] = {
        # Fails the first call of this request only: the job fails, its retry completes.
        "prompt": "Retry me. [[sim tokens=12 fail=500 fail_times=1]]",
        "job_type": "analysis",
        "priority": "high",
        "config": {"model": "gpt-4o-mini", "max_tokens": 40, "seed": 5, "stop": ["ZZZ"]},
        "metadata": {"ticket": "R-1", "nested": {"n": [1, None]}},
        "on_interrupt": "restart",
    }
    original = (await submit(base, user_token, **body))["job_id"]
    failed = await stored_result(base, user_token, original)
    assert failed["status"] == "failed", failed

    key = {"Idempotency-Key": "retry-r-1"}
    status, accepted, headers = await retry(base, user_token, original, key)
    assert status == 202, accepted
    new = accepted["job_id"]
    assert new != original and accepted["status"] == "queued"
    assert accepted["priority"] == "high" and accepted["job_type"] == "analysis"
    assert accepted["links"]["self"].endswith(f"/api/v1/jobs/{new}")
    assert headers["Location"] == accepted["links"]["self"]
    # The same key again: the same new job, not another.
    status, again, headers = await retry(base, user_token, original, key)
    assert status == 202 and again["job_id"] == new
    assert headers.get("Idempotent-Replayed") == "true"
    # The key now stands for this retry: submitting the same body under it is refused.
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{base}/api/v1/jobs",
            json=body,
            headers={"Authorization": f"Bearer {user_token}", **key},
        ) as resp,
    ):
        reused = await resp.json(content_type=None)
        assert resp.status == 409 and reused["type"].endswith("idempotency-key-reused"), reused

    result = await stored_result(base, user_token, new)
    assert result["status"] == "completed" and result["response"], result
    before, after = await job(base, user_token, original), await job(base, user_token, new)
    assert after["retry_of"] == original and after["retried_by"] == []
    assert before["retried_by"] == [new] and before["retry_of"] is None
    for field in ("prompt", "messages", "config", "metadata", "job_type", "priority"):
        assert after[field] == before[field], field
    assert after["config"]["stop"] == ["ZZZ"] and after["config"]["seed"] == 5
    assert after["user_id"] == "alice"

    # A completed job is not retried: a problem that says why.
    status, refused, headers = await retry(base, user_token, new)
    assert status == 409, refused
    assert headers["Content-Type"].startswith("application/problem+json")
    assert refused["status_of_job"] == "completed"
    assert "only failed or cancelled jobs can be retried" in refused["detail"]


async def test_a_cancelled_job_is_retried_and_a_running_one_is_refused(
    system: Stack, user_token: str
) -> None:
    base = system.urls()["gateway"]
    secret = system.auth_secret()
    original = (await submit(base, user_token, prompt="Go on. [[sim tokens=4000 tps=20]]"))[
        "job_id"
    ]
    await job_when(base, user_token, original, "running")
    status, refused, _ = await retry(base, user_token, original)
    assert status == 409 and refused["status_of_job"] == "running", refused

    status, cancel, _ = await call("POST", f"{base}/api/v1/jobs/{original}/cancel", user_token)
    assert status == 202, cancel
    await job_when(base, user_token, original, "cancelled")

    # Someone else's job is unknown to them, as every read of it is.
    bob = issue_token(secret, "bob")
    status, missing, _ = await retry(base, bob, original)
    assert status == 404 and "alice" not in missing["detail"], missing
    status, missing, _ = await retry(base, user_token, "no-such-job")
    assert status == 404, missing
    status, _, _ = await retry(base, "not-a-token", original)
    assert status == 401
    reader = issue_token(secret, "alice", [SCOPE_READ])
    status, forbidden, _ = await retry(base, reader, original)
    assert status == 403, forbidden
    writer = issue_token(secret, "alice", [SCOPE_WRITE])  # a retry reads the job first
    status, forbidden, _ = await retry(base, writer, original)
    assert status == 403 and "jobs:read" in forbidden["detail"], forbidden

    status, accepted, _ = await retry(base, user_token, original)
    assert status == 202, accepted
    mine = accepted["job_id"]
    # An admin may retry anyone's job; the retry is the owner's job, as the original was.
    admin = issue_token(secret, "root", [*DEFAULT_SCOPES, SCOPE_ADMIN])
    status, accepted, _ = await retry(base, admin, original)
    assert status == 202, accepted
    theirs = accepted["job_id"]
    assert theirs != mine

    for new in (mine, theirs):
        retried = await job_when(base, user_token, new, "running")
        assert retried["user_id"] == "alice" and retried["retry_of"] == original
        assert retried["prompt"] == "Go on. [[sim tokens=4000 tps=20]]"
        status, _, _ = await call("POST", f"{base}/api/v1/jobs/{new}/cancel", user_token)
        assert status == 202
    assert (await job(base, user_token, original))["retried_by"] == [mine, theirs]
