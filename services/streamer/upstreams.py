"""The streamer's side of the upstream registry: one openai client and one breaker per upstream.

`shared.upstreams` says which upstreams serve a model and in what order; this holds the
live client and circuit breaker of each (by upstream name, so two models on one server
share them) and picks the hops an attempt may take now.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import openai
from prometheus_client import Gauge

from services.streamer.breaker import CircuitBreaker
from services.streamer.upstream import make_client
from shared.upstreams import Hop, Registry, Upstream

DEFAULT_KEY_ENV = "OPENAI_API_KEY"


class MissingApiKey(ValueError):
    """An upstream names an API key variable the environment does not hold."""


@dataclass(slots=True)
class Link:
    """A live upstream: its entry, its client, its breaker."""

    upstream: Upstream
    client: openai.AsyncOpenAI
    breaker: CircuitBreaker


class Upstreams:
    """The links by upstream name, and the registry that routes models over them."""

    def __init__(
        self,
        registry: Registry,
        links: Mapping[str, Link],
        gauge: Gauge,
        rng: random.Random | None = None,
    ) -> None:
        self.registry = registry
        self.links = dict(links)
        self._gauge = gauge
        self._rng = rng or random.Random()
        for name, link in self.links.items():
            gauge.labels(name).set(link.breaker.state)

    def route(self, model: str) -> list[tuple[Hop, Link]]:
        """Every hop of the model's route, in the order an attempt tries them."""
        return [
            (hop, self.links[hop.upstream.name]) for hop in self.registry.route(model, self._rng)
        ]

    def allowed(self, route: list[tuple[Hop, Link]], now: float) -> Iterator[tuple[Hop, Link]]:
        """The hops whose breaker lets a call through now, asked lazily: asking a half-open
        breaker takes its one probe, so only the hop about to be tried is asked."""
        for hop, link in route:
            allowed = link.breaker.allow(now)
            self.report(link)
            if allowed:
                yield hop, link

    def report(self, link: Link) -> None:
        self._gauge.labels(link.upstream.name).set(link.breaker.state)

    def success(self, link: Link) -> None:
        link.breaker.success()
        self.report(link)

    def failure(self, link: Link, now: float) -> None:
        link.breaker.failure(now)
        self.report(link)

    def shortest_cooldown(self, route: list[tuple[Hop, Link]]) -> float:
        return min((link.breaker.cooldown_s for _, link in route), default=0.0)

    async def close(self) -> None:
        for link in self.links.values():
            await link.client.close()


def build_links(
    registry: Registry,
    *,
    default_base_url: str,
    default_api_key: str,
    aiohttp_client: bool,
    breaker_failures: int,
    breaker_cooldown_s: float,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Link]:
    """A client and a breaker per upstream; an empty base URL is the default upstream's.

    `OPENAI_API_KEY` is the streamer's own setting; any other key variable must be set,
    or start-up stops naming it (a job would otherwise fail at its first request).
    """
    env = os.environ if environ is None else environ
    links: dict[str, Link] = {}
    for name, upstream in registry.upstreams.items():
        if upstream.api_key_env == DEFAULT_KEY_ENV:
            key = default_api_key  # the setting reads OPENAI_API_KEY itself
        elif upstream.api_key_env in env:
            key = env[upstream.api_key_env]
        else:
            raise MissingApiKey(
                f"upstream {name!r} reads its API key from ${upstream.api_key_env}, which is unset"
            )
        client = make_client(
            upstream.base_url or default_base_url, key, aiohttp_client=aiohttp_client
        ).with_options(timeout=upstream.timeout_s)
        breaker = CircuitBreaker(failure_threshold=breaker_failures, cooldown_s=breaker_cooldown_s)
        links[name] = Link(upstream, client, breaker)
    return links
