"""The whole system as separate processes, on the suite's Kafka and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from deploy.localstack.procs import free_port
from deploy.localstack.stack import Ports, Stack
from shared.auth import issue_token
from tests.conftest import STATE


@contextmanager
def running_system(
    state_dir: Path,
    kafka_bootstrap: str,
    database_url: str,
    *,
    topic_prefix: str = "streamjobs",
    env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """Every process of streamjobs on free ports, started the way `make run` starts them."""
    ports = Ports(
        **{
            name: free_port()
            for name in ("simulator", "gateway", "results", "notifier", "streamer")
        },
        notifier_sse=free_port(),
    )
    stack = Stack(
        state_dir=state_dir / f"system-{uuid.uuid4().hex[:6]}",
        cache_dir=STATE / "cache",
        ports=ports,
        kafka_bootstrap=kafka_bootstrap,
        database_url=database_url,
        topic_prefix=topic_prefix,
        extra_env={"SIM_TOKENS_PER_SECOND": "400", "SIM_TTFT_MS": "20", **(env or {})},
    )
    try:
        stack.start_simulator()
        for name in ("results", "streamer", "notifier", "gateway"):
            stack.start_service(name)
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def system(
    kafka_bootstrap: str, database_url: str, topic_prefix: str, test_state_dir: Path
) -> Iterator[Stack]:
    """The whole system on the suite's Kafka and PostgreSQL, on fresh topics."""
    with running_system(
        test_state_dir, kafka_bootstrap, database_url, topic_prefix=topic_prefix
    ) as stack:
        yield stack


@pytest.fixture
def user_token(system: Stack) -> str:
    return issue_token(system.auth_secret(), "alice")
