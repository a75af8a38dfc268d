"""The upstream registry: which servers serve a model, in what order, and what comes after.

Built from the `[models]` tables of the workload file (`shared.workloads`). A model has
one or more upstreams (OpenAI-compatible servers), an optional fallback model tried when
every one of them failed, and a default for what a cut-short attempt does next
(`on_interrupt`). `"*"` is the catch-all for model names no table names. Every service
reads the same registry: the gateway refuses models it cannot route, the streamer routes
attempts; `shared.prices` reads the prices in the same tables.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared import workloads
from shared.prices import Prices
from shared.workloads import WorkloadFileError

CATCH_ALL = "*"
OnInterrupt = Literal["restart", "continue"]
DEFAULT_ON_INTERRUPT: OnInterrupt = "restart"


class Upstream(BaseModel):
    """One OpenAI-compatible server a model is sent to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    base_url: str = Field(default="", description="empty: the streamer's OPENAI_BASE_URL")
    api_key_env: str = Field(default="OPENAI_API_KEY", min_length=1)
    weight: float = Field(default=1.0, gt=0)
    timeout_s: float = Field(default=60.0, gt=0)
    price: dict[str, Any] | None = Field(default=None, description="read by `shared.prices`")

    def same_server(self, other: Upstream) -> bool:
        """A name used under several models must mean one server (one client, one breaker)."""
        return (self.base_url, self.api_key_env, self.timeout_s) == (
            other.base_url,
            other.api_key_env,
            other.timeout_s,
        )


class ModelEntry(BaseModel):
    """One `[models.<name>]` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    upstreams: tuple[Upstream, ...] = Field(min_length=1)
    fallback: str | None = None
    on_interrupt: OnInterrupt | None = None
    price: dict[str, Any] | None = Field(default=None, description="read by `shared.prices`")


@dataclass(frozen=True, slots=True)
class Hop:
    """One step of a route: ask `model` of `upstream`."""

    model: str
    upstream: Upstream


class Registry:
    """Models by name, each resolved to the ordered upstreams an attempt may use."""

    def __init__(self, models: Mapping[str, ModelEntry]) -> None:
        self.models = dict(models)
        servers: dict[str, Upstream] = {}
        for entry in self.models.values():
            for upstream in entry.upstreams:
                servers.setdefault(upstream.name, upstream)
        self.upstreams = servers  # one per name: what the streamer builds a client for

    def entry(self, model: str) -> ModelEntry | None:
        """The model's own table, else the catch-all, else None (the model is refused)."""
        return self.models.get(model) or self.models.get(CATCH_ALL)

    def knows(self, model: str) -> bool:
        return self.entry(model) is not None

    def on_interrupt(self, model: str, asked: OnInterrupt | None = None) -> OnInterrupt:
        """The job's own choice, else the model's default, else restart."""
        if asked is not None:
            return asked
        entry = self.entry(model)
        if entry is not None and entry.on_interrupt is not None:
            return entry.on_interrupt
        return DEFAULT_ON_INTERRUPT

    def route(self, model: str, rng: random.Random | None = None) -> list[Hop]:
        """The hops to try for `model`: its upstreams (the first a weighted draw, the rest
        in file order), then its fallback model's the same way, and so on (no cycles)."""
        draw = rng or random
        hops: list[Hop] = []
        name: str | None = model
        seen: set[str] = set()
        while name is not None and name not in seen:
            seen.add(name)
            entry = self.entry(name)
            if entry is None:
                break
            hops.extend(Hop(name, u) for u in _weighted_first(entry.upstreams, draw))
            name = entry.fallback
        return hops


def _weighted_first(upstreams: Sequence[Upstream], draw: Any) -> list[Upstream]:
    if len(upstreams) == 1:
        return list(upstreams)
    first = draw.choices(range(len(upstreams)), weights=[u.weight for u in upstreams])[0]
    return [upstreams[first], *(u for i, u in enumerate(upstreams) if i != first)]


def parse(section: Mapping[str, Any]) -> Registry:
    """The registry of a `[models]` table; raises `WorkloadFileError` naming the bad entry."""
    models: dict[str, ModelEntry] = {}
    for name, table in section.items():
        if not isinstance(table, dict):
            raise WorkloadFileError(f"[models.{name!r}] must be a table")
        for i, upstream in enumerate(table.get("upstreams") or ()):
            if not isinstance(upstream, dict) or not upstream.get("name"):
                raise WorkloadFileError(f"[models.{name!r}] upstream {i + 1} has no name")
        try:
            models[name] = ModelEntry.model_validate({**table, "name": name})
        except ValidationError as exc:
            raise WorkloadFileError(f"[models.{name!r}]: {_first_error(exc)}") from exc
    _check_names(models)
    _check_fallbacks(models)
    Prices.of({"models": section})  # the prices are read (and refused) where they are used
    return Registry(models)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]


def _check_names(models: Mapping[str, ModelEntry]) -> None:
    servers: dict[str, tuple[str, Upstream]] = {}
    for entry in models.values():
        names = [u.name for u in entry.upstreams]
        for name in names:
            if names.count(name) > 1:
                raise WorkloadFileError(f"[models.{entry.name!r}] names upstream {name!r} twice")
        for upstream in entry.upstreams:
            known = servers.setdefault(upstream.name, (entry.name, upstream))
            if not known[1].same_server(upstream):
                raise WorkloadFileError(
                    f"duplicate upstream name {upstream.name!r}: [models.{known[0]!r}] and"
                    f" [models.{entry.name!r}] give it different servers"
                )


def _check_fallbacks(models: Mapping[str, ModelEntry]) -> None:
    for entry in models.values():
        if entry.fallback is not None and entry.fallback not in models:
            raise WorkloadFileError(
                f"[models.{entry.name!r}] falls back to {entry.fallback!r}, which has no entry"
            )
    for start in models:
        chain = [start]
        following = models[start].fallback
        while following is not None:
            if following in chain:
                cycle = " -> ".join([*chain[chain.index(following) :], following])
                raise WorkloadFileError(f"fallback cycle: {cycle}")
            chain.append(following)
            following = models[following].fallback


def load(path: str | Path | None = None) -> Registry:
    """The registry of the workload file at `path` (empty: the packaged defaults)."""
    return parse(workloads.section(workloads.load(path), "models"))
