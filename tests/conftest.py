"""Session fixtures: the real Kafka broker and PostgreSQL server the suite starts itself.

`TEST_KAFKA_BOOTSTRAP_SERVERS` / `TEST_DATABASE_URL` point the suite at servers
that already run instead; by default it starts its own under `.state/test/`.
A shell that sourced `.state/stack.env` exports the running stack's settings; the session
drops every one of them first, so no test sees the stack's URLs, ports or secret.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from deploy.localstack.envfile import exported_names
from deploy.localstack.kafka import KafkaNode
from deploy.localstack.postgres import PostgresNode
from deploy.localstack.procs import free_port
from shared.kafka import ensure_topics

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".state"
AUTH_SECRET = "test-secret-0123456789abcdef0123456789abcdef"


def pytest_configure(config: pytest.Config) -> None:
    """Before any test module is imported: forget what a sourced stack.env exported."""
    for name in exported_names():
        os.environ.pop(name, None)


@pytest.fixture(scope="session")
def test_state_dir() -> Iterator[Path]:
    path = STATE / "test" / f"run-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server_dir(test_state_dir: Path) -> Path:
    """A folder for a server a test starts itself (PostgreSQL, a local stack).

    Under the suite's state dir, not pytest's tmp dir: the embedded PostgreSQL runs as its
    own system user, which must reach its data folder, and pytest resets its tmp root to
    0700 whenever another pytest session starts. Kept short: the server's Unix socket lives
    in it, and socket paths hold at most 107 bytes.
    """
    path = test_state_dir / f"srv-{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True)
    return path


@pytest.fixture(scope="session")
def kafka_bootstrap(test_state_dir: Path) -> Iterator[str]:
    """Bootstrap servers of a real Kafka broker, started once per session."""
    existing = os.environ.get("TEST_KAFKA_BOOTSTRAP_SERVERS")
    if existing:
        yield existing
        return
    node = KafkaNode(test_state_dir / "kafka", STATE / "cache", free_port(), free_port())
    node.start()
    try:
        yield node.bootstrap_servers
    finally:
        node.stop()


@pytest.fixture(scope="session")
def postgres_node(test_state_dir: Path) -> Iterator[PostgresNode | None]:
    if os.environ.get("TEST_DATABASE_URL"):
        yield None
        return
    node = PostgresNode(test_state_dir / "postgres", free_port())
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def postgres_dsn(postgres_node: PostgresNode | None) -> str:
    """DSN of the server's maintenance database; tests make their own databases."""
    return os.environ.get("TEST_DATABASE_URL") or (postgres_node.dsn if postgres_node else "")


@pytest.fixture
async def database_url(postgres_dsn: str) -> AsyncIterator[str]:
    """A fresh, empty database for one test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base, _, _ = postgres_dsn.rpartition("/")
    yield f"{base}/{name}"
    admin = await asyncpg.connect(postgres_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def topic_prefix(kafka_bootstrap: str) -> str:
    """A fresh set of streamjobs topics for one test, so tests never see each other's records."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    await ensure_topics(kafka_bootstrap, prefix, partitions=4)
    return prefix


@pytest.fixture
def auth_secret() -> str:
    return AUTH_SECRET
