"""Each service's channel declaration says what its code reads, and the derived grants follow it."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from prometheus_client import CollectorRegistry

import services.gateway
import services.notifier
import services.results
import services.streamer
from deploy.localstack.acls import group_acl, service_acls
from services.gateway.admission_link import KafkaAdmissionLink
from services.gateway.admission_owner import AdmissionOwner
from services.gateway.admission_records import transactional_id
from services.gateway.channels import (
    ADMISSION_OWNER,
    DECISIONS_READER,
    EVENTS_VIEW,
    GATEWAY,
    REPLIES_READER,
    WEBHOOK_DEFAULTS_READER,
)
from services.gateway.events import EventsReader
from services.gateway.metrics import GatewayMetrics
from services.gateway.view import EventsView
from services.notifier.channels import NOTIFIER, READER
from services.notifier.metrics import NotifierMetrics
from services.notifier.reader import Reader
from services.results.channels import (
    INSTANCES_READER,
    PERSISTER,
    RESULTS,
    WEBHOOK_DELIVERER,
    WEBHOOK_PLANNER,
)
from services.results.instances import Board, InstancesReader
from services.results.settings import ResultsSettings
from services.streamer.channels import CONTROL_READER, JOB_INTAKE, RETRY_INTAKE, STREAMER
from services.streamer.control import ControlReader
from services.streamer.settings import StreamerSettings
from shared.asyncapi import SERVICES
from shared.channels import REVOCATIONS_FOLLOWER, Consumer, ServiceChannels
from shared.revocation import RevocationFollower
from shared.topics import (
    GROUP_WEBHOOK_DELIVERER,
    GROUP_WEBHOOK_PLANNER,
    chunks_topic,
    dlq_topic,
    events_topic,
    instances_topic,
    job_topics,
    retry_topic,
    revocations_topic,
    webhooks_retry_topic,
    webhooks_topic,
)
from shared.verifier import TokenVerifier

PREFIX = "test-channels"
BOOTSTRAP = "127.0.0.1:1"  # never dialled: nothing here is started


def _follows_revocations(package: ModuleType) -> bool:
    """Whether any module of the service's package starts a revocations follower."""
    assert package.__file__ is not None
    sources = (path.read_text() for path in Path(package.__file__).parent.glob("*.py"))
    return any("follow_revocations(" in text or "RevocationFollower(" in text for text in sources)


def _view() -> EventsView:
    return EventsView(
        submissions_per_minute=60,
        max_in_flight=10,
        window_s=60.0,
        final_retention_s=60.0,
        max_jobs=100,
        in_flight_retry_after_s=1.0,
        max_idempotency_keys=100,
    )


def _verifier() -> TokenVerifier:
    return TokenVerifier.from_settings(ResultsSettings(streamjobs_auth_secret="s" * 32))


@pytest.mark.parametrize(
    ("service", "package"),
    [
        (GATEWAY, services.gateway),
        (STREAMER, services.streamer),
        (RESULTS, services.results),
        (NOTIFIER, services.notifier),
    ],
    ids=lambda value: getattr(value, "service", ""),
)
def test_a_service_declares_the_revocations_follower_exactly_when_its_app_starts_one(
    service: ServiceChannels, package: ModuleType
) -> None:
    assert (REVOCATIONS_FOLLOWER in service.consumers) is _follows_revocations(package)


def test_the_revocations_follower_reads_the_declared_topic() -> None:
    follower = RevocationFollower(BOOTSTRAP, PREFIX, _verifier())
    assert [follower.topic] == REVOCATIONS_FOLLOWER.topics(PREFIX) == [revocations_topic(PREFIX)]


def test_the_gateway_events_view_reads_the_declared_topics() -> None:
    view = _view()
    reader = EventsReader(BOOTSTRAP, PREFIX, view, lookback_s=60.0)
    assert reader.follower.topics == EVENTS_VIEW.topics(PREFIX)
    assert GATEWAY.consumers == (
        EVENTS_VIEW,
        REVOCATIONS_FOLLOWER,
        WEBHOOK_DEFAULTS_READER,
        ADMISSION_OWNER,
        DECISIONS_READER,
        REPLIES_READER,
    )


def test_the_admission_owner_and_link_use_the_declared_topics_group_and_transactional_ids() -> None:
    view = _view()
    metrics = GatewayMetrics(CollectorRegistry())
    owner = AdmissionOwner(BOOTSTRAP, PREFIX, view, metrics, instance="g-0", batch=10, rebuild_s=1)
    assert [owner.topic] == ADMISSION_OWNER.topics(PREFIX)
    assert owner.group == ADMISSION_OWNER.group_name(PREFIX)
    assert [owner.decisions] == DECISIONS_READER.topics(PREFIX)

    async def send(_user: str, _record: bytes) -> None:
        return None

    link = KafkaAdmissionLink(BOOTSTRAP, PREFIX, send, instance="g-0")
    assert link.follower.topics == REPLIES_READER.topics(PREFIX)
    assert GATEWAY.transactional_ids is not None
    prefix = GATEWAY.transactional_ids(PREFIX)
    assert all(transactional_id(PREFIX, p).startswith(prefix) for p in range(8))
    # The grants follow: the group by its name, the ids by their prefix.
    gateway = {(a.resource, a.name, a.operation) for a in service_acls(PREFIX)}
    assert ("group", owner.group, "read") in gateway
    assert {("transactional-id", prefix, op) for op in ("write", "describe")} <= gateway


def test_the_streamer_intakes_and_control_reader_read_the_declared_topics() -> None:
    control = ControlReader(BOOTSTRAP, PREFIX, lambda _job_id, _data: None, lambda _rejected: None)
    assert control.follower.topics == CONTROL_READER.topics(PREFIX)
    # The app subscribes its intakes to these lists and ranks them by the job topics' bands.
    assert JOB_INTAKE.topics(PREFIX) == job_topics(PREFIX)
    assert RETRY_INTAKE.topics(PREFIX) == [retry_topic(PREFIX)]
    assert STREAMER.consumers == (JOB_INTAKE, RETRY_INTAKE, CONTROL_READER)
    fields = StreamerSettings.model_fields
    defaults = [fields[name].default for name in ("streamer_group_id", "streamer_retry_group_id")]
    assert defaults == STREAMER.groups


def test_the_results_persister_reads_the_declared_topics_in_its_group() -> None:
    assert PERSISTER.topics(PREFIX) == [events_topic(PREFIX), chunks_topic(PREFIX)]
    assert RESULTS.consumers == (
        PERSISTER,
        WEBHOOK_PLANNER,
        WEBHOOK_DELIVERER,
        REVOCATIONS_FOLLOWER,
        INSTANCES_READER,
    )
    assert RESULTS.groups == [
        ResultsSettings.model_fields["results_group_id"].default,
        GROUP_WEBHOOK_PLANNER,
        GROUP_WEBHOOK_DELIVERER,
    ]
    assert WEBHOOK_DELIVERER.topics(PREFIX) == [
        webhooks_topic(PREFIX),
        webhooks_retry_topic(PREFIX),
    ]


def test_the_results_instances_reader_reads_what_the_streamer_publishes() -> None:
    (topic,) = INSTANCES_READER.topics(PREFIX)
    reader = InstancesReader(BOOTSTRAP, topic, Board(), client_id="t")
    assert reader._follower.topics == [instances_topic(PREFIX)]
    assert INSTANCES_READER.channels[0] in STREAMER.publishes
    assert INSTANCES_READER.group is None  # every results instance sees every streamer


def test_the_notifier_reader_reads_the_declared_topics() -> None:
    reader = Reader(
        BOOTSTRAP,
        events_topic(PREFIX),
        chunks_topic(PREFIX),
        lookback_s=60.0,
        on_event=lambda _event, _at: None,
        on_chunk=lambda _chunk, _at: None,
        metrics=NotifierMetrics(CollectorRegistry()),
    )
    assert reader.follower.topics == READER.topics(PREFIX)
    assert NOTIFIER.consumers == (READER, REVOCATIONS_FOLLOWER)


def test_every_published_topic_has_a_reader_but_the_dead_letters_left_to_operators() -> None:
    assert [s.service for s in SERVICES] == ["gateway", "streamer", "results", "notifier"]
    consumed = {c.topic(PREFIX) for s in SERVICES for c in s.consumes}
    published = {c.topic(PREFIX) for s in SERVICES for c in s.publishes}
    assert published - consumed == {dlq_topic(PREFIX)}


def test_a_service_whose_groups_share_no_prefix_is_refused() -> None:
    odd = ServiceChannels(
        "odd",
        publishes=(),
        consumers=(Consumer("a", (), group="one"), Consumer("b", (), group="two")),
    )
    with pytest.raises(ValueError, match="share no prefix"):
        group_acl(odd)
