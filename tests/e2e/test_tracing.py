"""One trace id follows a job through the logs of every service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deploy.localstack.stack import Stack
from tests.e2e.test_pipeline import PROMPT, follow, stored_result, submit
from tests.support import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def log_lines(path: Path, job_id: str) -> list[dict[str, Any]]:
    lines = []
    for raw in path.read_text().splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue  # a line some library printed outside our logging
        if isinstance(entry, dict) and entry.get("job_id") == job_id:
            lines.append(entry)
    return lines


async def test_every_service_logs_the_job_with_the_trace_id_the_client_sent(
    system: Stack, user_token: str
) -> None:
    urls = system.urls()
    accepted = await submit(
        urls["gateway"],
        user_token,
        prompt=PROMPT,
        priority="normal",
        headers={"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"},
    )
    job_id = accepted["job_id"]
    _, final = await follow(urls["notifier_ws"], user_token, job_id)
    assert final["event"] == "job.completed"
    await stored_result(urls["gateway"], user_token, job_id)

    for service in ("gateway", "streamer", "results", "notifier"):
        path = system.logs / f"{service}.log"
        lines = await wait_for(
            lambda path=path: log_lines(path, job_id),
            timeout=10,
            message=f"a {service} log line naming job {job_id}",
        )
        traces = {line.get("trace_id") for line in lines}
        assert traces == {TRACE_ID}, f"{service} logged job {job_id} under traces {traces}"
