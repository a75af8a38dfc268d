"""Fixtures the integration tests share (the Kafka and PostgreSQL fixtures: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer

from shared.kafka import make_producer


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    """A started producer on the suite's Kafka, as the services make theirs."""
    p = make_producer(kafka_bootstrap)
    await p.start()
    yield p
    await p.stop()
