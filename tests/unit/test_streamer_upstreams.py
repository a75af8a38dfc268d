"""The streamer's upstreams: a client and a breaker per upstream, routes past open breakers."""

from __future__ import annotations

import random
import tomllib
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from services.streamer.breaker import BreakerState
from services.streamer.metrics import StreamerMetrics
from services.streamer.upstreams import MissingApiKey, Upstreams, build_links
from shared.upstreams import Registry, parse

FILE = """
[models."a"]
fallback = "b"
[[models."a".upstreams]]
name = "one"
base_url = "http://one/v1"
timeout_s = 5
[[models."a".upstreams]]
name = "two"
base_url = "http://two/v1"
weight = 0.000001

[models."b"]
[[models."b".upstreams]]
name = "three"
api_key_env = "THREE_KEY"
"""


def registry() -> Registry:
    return parse(tomllib.loads(FILE)["models"])


@pytest.fixture
async def pool() -> AsyncIterator[tuple[Upstreams, StreamerMetrics, CollectorRegistry]]:
    prom = CollectorRegistry()
    metrics = StreamerMetrics(prom)
    links = build_links(
        registry(),
        default_base_url="http://default/v1",
        default_api_key="default-key",
        aiohttp_client=False,
        breaker_failures=2,
        breaker_cooldown_s=30,
        environ={"THREE_KEY": "three-key"},
    )
    upstreams = Upstreams(registry(), links, metrics.breaker_state, random.Random(0))
    yield upstreams, metrics, prom
    await upstreams.close()


async def test_each_upstream_gets_its_own_client_with_its_url_key_and_timeout(
    pool: tuple[Upstreams, StreamerMetrics, CollectorRegistry],
) -> None:
    upstreams, _, _ = pool
    one, two, three = (upstreams.links[n] for n in ("one", "two", "three"))
    assert str(one.client.base_url) == "http://one/v1/"
    assert one.client.timeout == 5 and one.client.max_retries == 0
    assert one.client.api_key == "default-key"
    assert str(three.client.base_url) == "http://default/v1/"  # empty: the default upstream
    assert three.client.api_key == "three-key"
    assert one.breaker is not two.breaker is not three.breaker


async def test_an_open_breaker_skips_only_its_upstream(
    pool: tuple[Upstreams, StreamerMetrics, CollectorRegistry],
) -> None:
    upstreams, _, prom = pool
    route = upstreams.route("a")
    assert [(h.model, h.upstream.name) for h, _ in route] == [
        ("a", "one"),
        ("a", "two"),
        ("b", "three"),
    ]
    one = upstreams.links["one"]
    upstreams.failure(one, now=100.0)
    upstreams.failure(one, now=100.0)
    assert one.breaker.state is BreakerState.OPEN
    assert upstreams.links["two"].breaker.state is BreakerState.CLOSED
    allowed = [h.upstream.name for h, _ in upstreams.allowed(route, now=101.0)]
    assert allowed == ["two", "three"]
    assert prom.get_sample_value("streamjobs_streamer_breaker_state", {"upstream": "one"}) == 1
    assert prom.get_sample_value("streamjobs_streamer_breaker_state", {"upstream": "two"}) == 0
    # After the cooldown the open upstream gets one probe again, in its place in the route.
    assert next(h.upstream.name for h, _ in upstreams.allowed(route, now=131.0)) == "one"


async def test_every_breaker_open_leaves_no_hop(
    pool: tuple[Upstreams, StreamerMetrics, CollectorRegistry],
) -> None:
    upstreams, _, _ = pool
    for link in upstreams.links.values():
        upstreams.failure(link, 0.0)
        upstreams.failure(link, 0.0)
    route = upstreams.route("a")
    assert list(upstreams.allowed(route, now=1.0)) == []
    assert upstreams.shortest_cooldown(route) == 30


def test_an_upstream_whose_key_variable_is_unset_stops_start_up() -> None:
    with pytest.raises(MissingApiKey, match=r"'three'.*\$THREE_KEY"):
        build_links(
            registry(),
            default_base_url="http://default/v1",
            default_api_key="k",
            aiohttp_client=False,
            breaker_failures=2,
            breaker_cooldown_s=30,
            environ={},
        )
