"""One way to create topics: every topic a service creates gets the service's replicas and
min.insync.replicas, and the replication settings are declared once for every service."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.admin import NewTopic
from pydantic import ValidationError

from services.gateway.admission_records import admissions_topic, decisions_topic
from services.gateway.admission_topics import admission_topics
from services.gateway.settings import GatewaySettings
from services.notifier.settings import NotifierSettings
from services.results.settings import ResultsSettings
from services.streamer.settings import StreamerSettings
from shared.kafka import JOB_TOPIC_CONFIGS, create_missing_topics, streamjobs_topics
from shared.settings import CommonSettings, TopicReplicationSettings
from shared.topics import all_topics, job_topics

SECRET = "s" * 32


class RecordingAdmin:
    """The two admin calls `create_missing_topics` makes; `existing` topics are listed."""

    def __init__(self, existing: set[str]) -> None:
        self.existing = existing
        self.created: list[NewTopic] = []

    async def list_topics(self) -> list[str]:
        return sorted(self.existing)

    async def create_topics(self, topics: list[NewTopic]) -> Any:
        self.created.extend(topics)

        class Response:
            topic_errors = [(t.name, 0, None) for t in topics]

        return Response()


REPLICATION = TopicReplicationSettings(kafka_replication_factor=3, kafka_min_insync_replicas=2)


async def test_missing_topics_get_the_replication_and_their_own_configs() -> None:
    topics = {**streamjobs_topics("p", 4), **admission_topics("p", 8)}
    existing = {all_topics("p")[0]}
    admin = RecordingAdmin(existing)
    created = await create_missing_topics(admin, topics, REPLICATION)  # type: ignore[arg-type]
    assert set(created) == set(topics) - existing
    by_name = {t.name: t for t in admin.created}
    assert set(by_name) == set(created)
    assert {t.replication_factor for t in admin.created} == {3}
    assert all(t.topic_configs["min.insync.replicas"] == "2" for t in admin.created)
    # The broker's append time judges accept_by on the job topics and the admission requests.
    timed = {
        name for name, t in by_name.items() if t.topic_configs.items() >= JOB_TOPIC_CONFIGS.items()
    }
    assert timed == ({*job_topics("p"), "p.jobs.retry", admissions_topic("p")} - existing)
    assert by_name[admissions_topic("p")].num_partitions == 8
    assert by_name[decisions_topic("p")].num_partitions == 8


async def test_nothing_is_created_where_every_topic_exists() -> None:
    topics = streamjobs_topics("p", 4)
    admin = RecordingAdmin(set(topics))
    assert await create_missing_topics(admin, topics, REPLICATION) == []  # type: ignore[arg-type]
    assert admin.created == []


@pytest.mark.parametrize(
    "settings_class", [GatewaySettings, StreamerSettings, ResultsSettings, NotifierSettings]
)
def test_every_service_reads_the_replication_from_the_one_declaration(
    settings_class: type[CommonSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("KAFKA_MIN_INSYNC_REPLICAS", "2")
    settings = settings_class(streamjobs_auth_secret=SECRET)
    assert isinstance(settings, TopicReplicationSettings)
    assert (settings.kafka_replication_factor, settings.kafka_min_insync_replicas) == (3, 2)
    monkeypatch.setenv("KAFKA_MIN_INSYNC_REPLICAS", "4")
    with pytest.raises(ValidationError, match="exceeds"):
        settings_class(streamjobs_auth_secret=SECRET)
