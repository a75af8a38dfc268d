"""Token prices from the workload file: `[models.<name>].price`, overridden per upstream.

Only the price fields of `[models]` are read here (the rest of each table is the upstream
registry's). A price is USD per million tokens: `input` and `output` (required),
`cached_input` (prompt tokens the upstream served from its cache; `input` when absent) and
`reasoning` (completion tokens spent reasoning; `output` when absent). A model the file
prices nowhere has no price: its cost is null, never a made-up default. A dated snapshot
(`gpt-4o-2024-08-06`, `gpt-4-0613`) costs as its family (`gpt-4o`, `gpt-4`) unless the
file prices the snapshot itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from shared.workloads import WorkloadFileError, load, section

CATCH_ALL = "*"
_FIELDS = ("input", "output", "cached_input", "reasoning")
# A snapshot's date suffix: -2024-08-06 (OpenAI today) or -0613 (older models).
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})$")
_MILLION = Decimal(1_000_000)
_PLACES = Decimal("0.00000001")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per one million tokens."""

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    reasoning: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """The token counts a cost is made of; cached and reasoning tokens are parts of the others."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None


def cost_usd(price: Price, usage: Usage) -> Decimal:
    """Uncached input, cached input, plain output and reasoning tokens, each at its price."""
    cached = min(max(usage.cached_tokens or 0, 0), usage.prompt_tokens)
    reasoning = min(max(usage.reasoning_tokens or 0, 0), usage.completion_tokens)
    micro = (
        price.input * (usage.prompt_tokens - cached)
        + (price.cached_input if price.cached_input is not None else price.input) * cached
        + price.output * (usage.completion_tokens - reasoning)
        + (price.reasoning if price.reasoning is not None else price.output) * reasoning
    )
    return (micro / _MILLION).quantize(_PLACES)


def _price(where: str, value: object) -> Price:
    if not isinstance(value, dict):
        raise WorkloadFileError(f"{where}.price must be a table of USD per million tokens")
    unknown = sorted(set(value) - set(_FIELDS))
    if unknown:
        raise WorkloadFileError(f"{where}.price: unknown keys {unknown} (known: {list(_FIELDS)})")
    numbers: dict[str, Decimal] = {}
    for key, number in value.items():
        if isinstance(number, bool) or not isinstance(number, int | float) or number < 0:
            raise WorkloadFileError(f"{where}.price.{key} must be a number >= 0, not {number!r}")
        numbers[key] = Decimal(str(number))
    for key in ("input", "output"):
        if key not in numbers:
            raise WorkloadFileError(f"{where}.price needs {key} (USD per million tokens)")
    return Price(
        numbers["input"], numbers["output"], numbers.get("cached_input"), numbers.get("reasoning")
    )


@dataclass(frozen=True, slots=True)
class _Priced:
    price: Price | None
    upstreams: dict[str, Price]


class Prices:
    """What a model costs on an upstream, from the `[models]` tables of the workload file."""

    def __init__(self, models: dict[str, _Priced]) -> None:
        self._models = models

    @classmethod
    def of(cls, document: dict[str, Any]) -> Prices:
        """The prices of a parsed workload file; raises `WorkloadFileError`."""
        models: dict[str, _Priced] = {}
        for name, entry in section(document, "models").items():
            where = f'[models."{name}"]'
            if not isinstance(entry, dict):
                raise WorkloadFileError(f"{where} must be a table")
            price = _price(where, entry["price"]) if "price" in entry else None
            upstreams: dict[str, Price] = {}
            listed = entry.get("upstreams", [])
            if not isinstance(listed, list):
                raise WorkloadFileError(f"{where}.upstreams must be an array of tables")
            for i, upstream in enumerate(listed):
                if isinstance(upstream, dict) and "price" in upstream:
                    label = upstream.get("name", i)
                    upstreams[str(label)] = _price(f"{where}.upstreams[{label}]", upstream["price"])
            models[name] = _Priced(price, upstreams)
        return cls(models)

    def family(self, model: str | None) -> str | None:
        """The `[models]` name `model` is priced as (itself, or its snapshot's family)."""
        if not model:
            return None
        if model in self._models:
            return model
        stem = _SNAPSHOT.sub("", model)
        return stem if stem != model and stem in self._models else None

    def price_of(self, model: str | None, upstream: str | None = None) -> Price | None:
        """The price of `model` on `upstream` (None: the model's own); None when unpriced."""
        name = self.family(model)
        entry = self._models.get(name if name is not None else CATCH_ALL)
        if entry is None:
            return None
        if upstream is not None and upstream in entry.upstreams:
            return entry.upstreams[upstream]
        return entry.price

    def label(self, model: str | None) -> str:
        """A bounded metric label: the priced family of `model`, or `other`."""
        name = self.family(model)
        return name if name is not None and self.price_of(name) is not None else "other"


def load_prices(path: str | None = None) -> Prices:
    """The prices of the workload file at `path` (empty: the packaged defaults)."""
    return Prices.of(load(path or None))
