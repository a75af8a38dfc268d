"""The demo `make fleet` ends with streams through the fleet: from the instance the job's
links name, and through a redirect when it starts at the other one."""

from __future__ import annotations

import os
import subprocess
import sys

import aiohttp
import pytest

from deploy import demo
from shared.routing import notifier_for
from tests.conftest import ROOT
from tests.fleet.conftest import RunningFleet

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.postgres,
    pytest.mark.e2e,
    pytest.mark.timeout(120, func_only=True),
]


def stack_env(fleet: RunningFleet) -> dict[str, str]:
    exported = dict(
        line.removeprefix("export ").replace("'", "").split("=", 1)
        for line in fleet.stack_env.read_text().splitlines()
    )
    return {**os.environ, **exported}


def test_the_demo_streams_a_job_through_the_fleet_and_its_result_matches(
    fleet: RunningFleet,
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "deploy.demo", "--max-tokens", "40"],
        cwd=ROOT,
        env=stack_env(fleet),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "matches stream    True" in done.stdout, done.stdout


async def test_the_demo_started_at_the_other_notifier_follows_the_redirect(
    fleet: RunningFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    token = fleet.token("demo-redirected")
    body = {
        "prompt": "Say a little. [[sim tokens=40 tps=40]]",
        "job_type": "analysis",
        "priority": "high",
        "config": {"model": "gpt-4o-mini", "max_tokens": 40},
    }
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.post(f"{fleet.gateways[0]}/api/v1/jobs", json=body) as resp,
    ):
        assert resp.status == 202, await resp.text()
        job_id = (await resp.json())["job_id"]
    serving = notifier_for(job_id, fleet.fleet.partitions, 2)
    final = await demo.stream(fleet.ws_url(1 - serving), token, job_id)
    assert final["event"] == "job.completed", final
    printed = capsys.readouterr().out
    assert f"[redirected to {fleet.ws_url(serving)}]" in printed
    assert final["data"]["response"] in printed
