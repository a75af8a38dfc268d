"""`python -m deploy.doctor` against every process of a running system: all checks pass."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from deploy.localstack.stack import Stack
from shared.auth import issue_token
from tests.conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]


async def run_doctor(env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "deploy.doctor",
        "--env-file",
        "/nonexistent",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=90)
    return proc.returncode or 0, out.decode()


def doctor_env(system: Stack) -> dict[str, str]:
    urls = system.urls()
    return {
        "PATH": os.environ.get("PATH", ""),
        **system.service_env(),
        "STREAMJOBS_URL": urls["gateway"],
        "STREAMJOBS_WS_URL": urls["notifier_ws"],
        "STREAMJOBS_TOKEN": issue_token(system.auth_secret(), "doctor"),
    }


async def test_doctor_passes_every_check_and_monitors_the_test_job(system: Stack) -> None:
    code, out = await run_doctor(
        doctor_env(system), "--monitor", "--priority", "urgent", "--timeout", "45"
    )
    assert code == 0, out
    lines = out.splitlines()
    for name in (
        "Python",
        "Java",
        "Kafka reachable",
        "Kafka topics",
        "PostgreSQL reachable",
        "LLM endpoint",
        "gateway ready",
        "results ready",
        "notifier ready",
        "streamer ready",
        "job round trip",
    ):
        assert any(line.startswith(f"✓ {name}") for line in lines), (name, out)
    assert any("tokens/s" in line for line in lines), out
    assert "✗" not in out


async def test_doctor_fails_naming_the_service_that_is_down(system: Stack) -> None:
    system.processes.pop("notifier").stop(grace_s=10)
    code, out = await run_doctor(doctor_env(system), "--timeout", "10")
    assert code == 1, out
    assert any(line.startswith("✗ notifier ready") for line in out.splitlines()), out
    assert any(line.startswith("✗ job round trip") for line in out.splitlines()), out
    assert any(line.startswith("✓ gateway ready") for line in out.splitlines()), out
