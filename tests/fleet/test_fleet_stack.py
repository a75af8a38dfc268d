"""The fleet `make fleet` starts: replicated topics, every instance ready, its stack.env and
fleet.json, a job through the second gateway, `status` over it and `stop` of all of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import aiohttp
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from deploy.localstack.procs import pid_alive, port_free
from tests.conftest import ROOT
from tests.fleet.conftest import RunningFleet
from tests.support import wait_for

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.postgres,
    pytest.mark.e2e,
    pytest.mark.timeout(240, func_only=True),
]


async def test_every_topic_has_three_replicas_and_min_insync_two(fleet: RunningFleet) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=fleet.bootstrap)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(fleet.topic_prefix)]
        topics.append("__consumer_offsets")
        described = await admin.describe_topics(topics)
        configs = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics]
        )
    finally:
        await admin.close()
    assert len(topics) >= 10, topics  # the jobs bands, retry, dlq, control, events, chunks, ...
    for topic in described:
        assert topic["partitions"], topic["topic"]
        for partition in topic["partitions"]:
            assert len(partition["replicas"]) == 3, (topic["topic"], partition)
    min_isr = {
        resource[3]: dict((entry[0], entry[1]) for entry in resource[4])["min.insync.replicas"]
        for response in configs
        for resource in response.resources
    }
    assert min_isr == dict.fromkeys(topics, "2")


def test_every_instance_and_the_simulator_is_ready(fleet: RunningFleet) -> None:
    ready = [
        e["ready"] for e in json.loads(fleet.manifest_path.read_text())["processes"] if "ready" in e
    ]
    assert len(ready) == 4 * 2 + 1
    for url in ready:
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.status == 200, url


def test_stack_env_names_every_broker_and_the_first_gateway(fleet: RunningFleet) -> None:
    exported = dict(
        line.removeprefix("export ").replace("'", "").split("=", 1)
        for line in fleet.stack_env.read_text().splitlines()
    )
    assert exported["STREAMJOBS_URL"] == fleet.url("gateway", 0)
    assert exported["KAFKA_BOOTSTRAP_SERVERS"].split(",") == fleet.bootstrap.split(",")
    assert len(exported["KAFKA_BOOTSTRAP_SERVERS"].split(",")) == 3
    assert exported["STREAMJOBS_GATEWAY_URLS"].split(",") == fleet.gateways
    assert exported["STREAMJOBS_NOTIFIER_WS_URLS"].split(",") == [fleet.ws_url(0), fleet.ws_url(1)]
    manifest = json.loads(fleet.manifest_path.read_text())
    roles = sorted((e["role"], e["instance"]) for e in manifest["processes"])
    assert roles == sorted(
        [("kafka", b) for b in range(3)]
        + [("postgres", 0), ("simulator", 0)]
        + [(r, i) for r in ("gateway", "notifier", "results", "streamer") for i in range(2)]
    )
    assert all(e["pid"] and pid_alive(e["pid"]) for e in manifest["processes"])


async def test_a_job_submitted_to_the_second_gateway_completes(fleet: RunningFleet) -> None:
    headers = {"Authorization": f"Bearer {fleet.token('bob')}"}
    body = {
        "prompt": "Say something short. [[sim tokens=40]]",
        "job_type": "analysis",
        "priority": "high",
        "config": {"model": "gpt-4o-mini", "max_tokens": 40},
    }
    second = fleet.gateways[1]
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(f"{second}/api/v1/jobs", json=body) as resp:
            assert resp.status == 202, await resp.text()
            job_id = (await resp.json())["job_id"]

        async def completed() -> bool:
            async with http.get(f"{second}/api/v1/jobs/{job_id}/result") as resp:
                return resp.status == 200 and (await resp.json())["status"] == "completed"

        await wait_for(completed, timeout=60, interval=0.3, message=f"job {job_id} completes")


def localstack(command: str, fleet: RunningFleet) -> subprocess.CompletedProcess[str]:
    """`make status` / `make stop`, for the state dir the fixture's fleet lives in."""
    return subprocess.run(
        [sys.executable, "-m", "deploy.localstack", command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
        env={**os.environ, "STREAMJOBS_STATE_DIR": str(fleet.fleet.state_dir.parent)},
        check=False,
    )


def test_status_lists_every_process_of_the_fleet_as_up(fleet: RunningFleet) -> None:
    done = localstack("status", fleet)
    assert done.returncode == 0, done.stdout + done.stderr
    listed = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines()[1:] if line}
    expected = {f"kafka-{b}" for b in range(3)} | {"postgres-0", "simulator-0"}
    expected |= {
        f"{r}-{i}" for r in ("gateway", "notifier", "results", "streamer") for i in range(2)
    }
    assert set(listed) >= expected, done.stdout
    assert {listed[name] for name in expected} <= {"ready", "running"}, done.stdout


@pytest.mark.stops_the_fleet  # runs after every other test (tests/fleet/conftest.py)
def test_stop_leaves_no_process_and_no_port_of_the_fleet(fleet: RunningFleet) -> None:
    pids = [e["pid"] for e in json.loads(fleet.manifest_path.read_text())["processes"]]
    done = localstack("down", fleet)
    assert done.returncode == 0, done.stderr
    assert "fleet stopped" in done.stdout
    assert [pid for pid in pids if pid and pid_alive(pid)] == []
    assert [port for port in fleet.fleet.all_ports() if not port_free(port)] == []
