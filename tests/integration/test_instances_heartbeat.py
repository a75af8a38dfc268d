"""Streamer heartbeats over the real broker: the results service shows the latest of each
instance to admins, marks a silent one gone, and drops one that stopped cleanly."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from services.results.instances import Board, InstancesReader
from services.streamer.heartbeat import Heartbeat
from shared.api import InstanceView
from shared.instances import StreamerHeartbeat
from shared.kafka import make_producer
from shared.runtime import BackgroundTasks
from shared.topics import instances_topic, job_topics, retry_topic
from tests.integration.results_kit import Reader, running, settings_for
from tests.integration.test_streamer_streaming import StartStreamer, fresh_sim, sim, start_streamer
from tests.support import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]
__all__ = ["fresh_sim", "sim", "start_streamer"]  # fixtures

STARTED = datetime.now(UTC)


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    p = make_producer(kafka_bootstrap, linger_ms=0)
    await p.start()
    yield p
    await p.stop()


def snapshot_of(
    instance: str, slots: list[int], interval_s: float
) -> Callable[[datetime], StreamerHeartbeat]:
    """A snapshot whose slots in use are whatever `slots[0]` holds when it is taken."""

    def snapshot(now: datetime) -> StreamerHeartbeat:
        return StreamerHeartbeat(
            instance_id=instance,
            host="host-1",
            pid=4242,
            slots_total=8,
            slots_in_use=slots[0],
            jobs_running=slots[0],
            partitions=["x.jobs.normal:0"],
            loop_lag_ms=2.0,
            started_at=STARTED,
            sent_at=now,
            interval_s=interval_s,
        )

    return snapshot


async def test_heartbeats_show_the_latest_state_then_gone_then_removed_by_the_tombstone(
    kafka_bootstrap: str,
    topic_prefix: str,
    database_url: str,
    auth_secret: str,
    producer: AIOKafkaProducer,
) -> None:
    settings = settings_for(
        kafka_bootstrap, topic_prefix, database_url, auth_secret, results_instance_stale_periods=2
    )
    topic = instances_topic(topic_prefix)
    busy = [1]
    steady = Heartbeat(producer, topic, "s-1", snapshot_of("s-1", busy, 0.2), interval_s=0.2)
    silent = Heartbeat(producer, topic, "s-2", snapshot_of("s-2", [0], 0.5), interval_s=0.5)
    background = BackgroundTasks()
    async with running(settings) as service, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{service.port}"
        admin = Reader(http, base, auth_secret, "root", "admin")
        alice = Reader(http, base, auth_secret, "alice")
        background.spawn(steady.loop())
        await silent.beat()  # one heartbeat, then nothing

        async def states() -> dict[str, tuple[str, int]]:
            status, body = await admin.get("/instances")
            assert status == 200, body
            return {i["instance_id"]: (i["state"], i["slots_in_use"]) for i in body["items"]}

        async def shown(expected: dict[str, tuple[str, int]]) -> bool:
            return await states() == expected

        await wait_for(
            lambda: shown({"s-1": ("up", 1), "s-2": ("up", 0)}), message="both not shown up"
        )
        busy[0] = 5  # the next heartbeat carries it
        await wait_for(
            lambda: shown({"s-1": ("up", 5), "s-2": ("gone", 0)}),
            message="the busy one not updated or the silent one not gone",
        )
        status, body = await admin.get("/instances")
        s1 = next(i for i in body["items"] if i["instance_id"] == "s-1")
        assert (s1["host"], s1["pid"], s1["slots_total"]) == ("host-1", 4242, 8)
        assert s1["partitions"] == ["x.jobs.normal:0"]
        assert body["items"][0]["instance_id"] == "s-1"  # those up first

        status, body = await alice.get("/instances")
        assert status == 403, body

        await background.cancel()
        await steady.stop()  # the tombstone
        await wait_for(lambda: shown({"s-2": ("gone", 0)}), message="tombstone not applied")


async def test_a_running_streamer_heartbeats_its_slots_and_partitions_and_a_stop_removes_it(
    kafka_bootstrap: str, topic_prefix: str, start_streamer: StartStreamer
) -> None:
    service = await start_streamer(
        streamer_slots=3, streamer_instance_heartbeat_s=0.2, instance_id="streamer-hb"
    )
    board = Board()
    reader = InstancesReader(
        kafka_bootstrap, instances_topic(topic_prefix), board, client_id="t-instances"
    )
    await reader.start()
    background = BackgroundTasks()
    background.spawn(reader.loop())
    try:

        def shown() -> InstanceView | None:
            items = board.view(datetime.now(UTC)).items
            return items[0] if items and items[0].partitions else None

        view = await wait_for(shown, timeout=30, message="no heartbeat with partitions")
        assert (view.instance_id, view.state, view.slots_total) == ("streamer-hb", "up", 3)
        assert view.slots_in_use == view.jobs_running == 0
        topics = {p.rsplit(":", 1)[0] for p in view.partitions}
        assert topics == {*job_topics(topic_prefix), retry_topic(topic_prefix)}
        await service.stop()
        await wait_for(lambda: board.latest == {}, message="no tombstone after a clean stop")
    finally:
        await background.cancel()
        await reader.stop()
