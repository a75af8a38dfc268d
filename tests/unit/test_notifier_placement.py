"""Which notifier instance serves a job, and what the others answer for it (no broker)."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from services.notifier.client import Client
from services.notifier.hub import Hub
from services.notifier.metrics import NotifierMetrics
from services.notifier.owners import OwnerIndex
from services.notifier.placement import Placement
from services.notifier.settings import NotifierSettings
from shared.auth import Principal
from shared.routing import notifier_for
from tests.unit.test_notifier_state import accepted, chunk, completed, queued

SECRET = "s" * 32
PARTITIONS = 4
URLS = ["ws://n0/ws", "ws://n1/ws"]


def job_of(instance: int, instances: int = 2) -> str:
    """The first of job-0, job-1, … that the given instance serves."""
    return next(
        f"job-{i}"
        for i in range(1000)
        if notifier_for(f"job-{i}", PARTITIONS, instances) == instance
    )


def placement(instance: int = 0, ws_urls: list[str] | None = None) -> Placement:
    p = Placement(instance, 2, URLS if ws_urls is None else ws_urls, ["http://s0", "http://s1"])
    p.owned(PARTITIONS)
    return p


def hub_at(p: Placement) -> Hub:
    return Hub(NotifierMetrics(CollectorRegistry()), owners=OwnerIndex(1000), placement=p)


def reader(user: str = "alice") -> Client:
    return Client(Principal(user, frozenset({"jobs:read"})), 100)


def test_one_instance_serves_every_job() -> None:
    p = Placement()
    assert p.owned(PARTITIONS) == [0, 1, 2, 3]
    assert all(p.serves(f"job-{i}") for i in range(50))


def test_two_instances_split_the_partitions_and_agree_with_the_routing() -> None:
    first, second = placement(0), placement(1)
    assert (first.owned(PARTITIONS), second.owned(PARTITIONS)) == ([0, 2], [1, 3])
    for i in range(50):
        job_id = f"job-{i}"
        owner = notifier_for(job_id, PARTITIONS, 2)
        assert first.serves(job_id) == (owner == 0)
        assert second.serves(job_id) == (owner == 1)


def test_redirect_names_the_owners_url_or_says_wrong_instance_without_one() -> None:
    job_id = job_of(1)
    with_url = json.loads(placement(0).redirect_frame(job_id, 1).text)
    without = json.loads(placement(0, ws_urls=["ws://n0/ws", ""]).redirect_frame(job_id, 1).text)
    assert with_url == {
        "type": "redirect",
        "channel": f"job:{job_id}",
        "job_id": job_id,
        "url": "ws://n1/ws",
        "instance": 1,
    }
    assert (without["type"], without["code"], without["instance"]) == ("error", "wrong_instance", 1)


def test_settings_read_the_url_lists_and_refuse_an_instance_out_of_range() -> None:
    s = NotifierSettings(
        streamjobs_auth_secret=SECRET,
        notifier_instance=1,
        notifier_instances=2,
        notifier_public_ws_urls=" ws://a/ws , ws://b/ws",
    )
    assert s.public_ws_urls == ["ws://a/ws", "ws://b/ws"]
    assert s.public_sse_urls == []
    default = NotifierSettings(streamjobs_auth_secret=SECRET)
    assert (default.notifier_instance, default.notifier_instances) == (0, 1)
    with pytest.raises(ValidationError, match="NOTIFIER_INSTANCE=2"):
        NotifierSettings(streamjobs_auth_secret=SECRET, notifier_instance=2, notifier_instances=2)


def test_the_owner_subscribing_here_to_a_job_served_elsewhere_is_redirected() -> None:
    h = hub_at(placement(0))
    job_id = job_of(1)
    h.on_event(accepted(job=job_id), 0.0)
    c = reader()
    h.subscribe_job(c, job_id, -1, None, 0.0)
    assert [m["type"] for m in queued(c)] == ["redirect"]
    assert not c.channels and not c.pending
    assert job_id not in h.jobs


def test_a_subscription_before_the_jobs_accepted_is_redirected_once_it_is_read() -> None:
    h = hub_at(placement(0))
    job_id = job_of(1)
    c = reader()
    h.subscribe_job(c, job_id, -1, None, 0.0)
    assert queued(c) == []
    h.on_event(accepted(job=job_id), 0.1)
    assert [m["url"] for m in queued(c)] == ["ws://n1/ws"]


def test_another_users_subscription_is_refused_after_the_wait_and_never_told_the_owner() -> None:
    h = hub_at(placement(0))
    job_id = job_of(1)
    h.on_event(accepted(job=job_id), 0.0)
    bob = reader("bob")
    h.subscribe_job(bob, job_id, -1, None, 0.0)
    assert queued(bob) == []
    h.sweep(10.0)
    assert [(m["type"], m["code"]) for m in queued(bob)] == [("error", "forbidden")]


def test_an_sse_client_is_told_the_owner_instead_of_a_frame() -> None:
    h = hub_at(placement(0))
    job_id = job_of(1)
    h.on_event(accepted(job=job_id), 0.0)
    told: list[tuple[str, int]] = []
    c = Client(
        Principal("alice", frozenset({"jobs:read"})),
        100,
        on_redirect=lambda job, owner: told.append((job, owner)),
    )
    h.subscribe_job(c, job_id, -1, None, 0.0)
    assert told == [(job_id, 1)] and queued(c) == []


def test_user_channel_gets_events_of_jobs_served_elsewhere_at_once_and_once() -> None:
    h = hub_at(placement(0))
    mine, elsewhere = job_of(0), job_of(1)
    c = reader()
    h.subscribe_user(c, "alice")
    queued(c)
    for job_id in (mine, elsewhere):
        h.on_event(accepted(job=job_id), 0.0)
    h.on_chunk(chunk(0, job=mine), 0.0)
    # Both name a last chunk not read here: only the served job's final waits for it.
    for job_id in (mine, elsewhere):
        h.on_event(completed(last_seq=3, job=job_id), 0.0)
        h.on_event(completed(last_seq=3, job=job_id), 0.0)
    h.on_event(accepted("mallory", job=elsewhere), 0.0)
    got = [(m["event"], m["job_id"]) for m in queued(c) if m["type"] == "event"]
    assert got == [
        ("job.accepted", mine),
        ("job.accepted", elsewhere),
        ("job.completed", elsewhere),
    ]
    assert list(h.jobs) == [mine]
