"""A job's links and SSE proxy name the notifier instance serving its chunk partition."""

from __future__ import annotations

import uuid

from services.gateway.notifiers import NotifierRoutes
from services.gateway.settings import GatewaySettings
from shared.routing import notifier_for

SECRET = "unit-secret-at-least-32-bytes-long"


def test_each_job_is_sent_to_the_instance_owning_its_chunk_partition() -> None:
    routes = NotifierRoutes(
        ["ws://n0/ws", "ws://n1/ws"], ["http://n0", "http://n1"], chunk_partitions=6
    )
    for job_id in (str(uuid.uuid4()) for _ in range(50)):
        instance = notifier_for(job_id, 6, 2)
        assert routes.ws_url(job_id) == f"ws://n{instance}/ws"
        assert routes.sse_base(job_id) == f"http://n{instance}"


def test_the_single_url_settings_are_a_one_instance_list_and_the_lists_win() -> None:
    old = GatewaySettings(
        streamjobs_auth_secret=SECRET,
        gateway_public_ws_url="ws://one/ws",
        notifier_sse_url="http://one",
    )
    assert (old.notifier_ws_urls, old.notifier_sse_urls) == (["ws://one/ws"], ["http://one"])
    new = GatewaySettings(
        streamjobs_auth_secret=SECRET,
        gateway_public_ws_url="ws://one/ws",
        gateway_notifier_ws_urls="ws://a/ws, ws://b/ws",
    )
    assert new.notifier_ws_urls == ["ws://a/ws", "ws://b/ws"]
    assert NotifierRoutes([], []).ws_url("j") is None
