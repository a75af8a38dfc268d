"""A service's /metrics read by the bench: counters, gauges and histogram quantiles between scrapes.

Quantiles follow Prometheus' `histogram_quantile`: linear inside the bucket that holds the
rank; a rank in the `+Inf` bucket answers the largest finite bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]
Buckets = list[tuple[float, float]]  # (le, cumulative count), ascending le


@dataclass(frozen=True, slots=True)
class Scrape:
    samples: dict[tuple[str, Labels], float]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples: dict[tuple[str, Labels], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, frozenset(s.labels.items()))] = s.value
        return cls(samples)

    def has(self, name: str) -> bool:
        """Whether any sample of `name` (a histogram's base name included) is exposed."""
        prefixes = (name, f"{name}_bucket", f"{name}_count")
        return any(sample in prefixes for sample, _ in self.samples)

    def value(self, name: str) -> float | None:
        """The sum of `name` over all its label sets; None when absent."""
        found = [v for (sample, _), v in self.samples.items() if sample == name]
        return sum(found) if found else None

    def buckets(self, name: str) -> Buckets | None:
        """The histogram's cumulative buckets summed over its other labels; None when absent."""
        by_le: dict[float, float] = {}
        for (sample, labels), v in self.samples.items():
            if sample != f"{name}_bucket":
                continue
            le = float(dict(labels)["le"])
            by_le[le] = by_le.get(le, 0.0) + v
        return sorted(by_le.items()) if by_le else None


def delta(before: Buckets | None, after: Buckets) -> Buckets:
    """The observations made between two scrapes of the same histogram."""
    if before is None:
        return after
    old = dict(before)
    return [(le, count - old.get(le, 0.0)) for le, count in after]


def histogram_quantile(q: float, buckets: Buckets) -> float:
    """The q-quantile (0-1) of cumulative buckets; NaN when they hold no observation."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


async def scrape(http: aiohttp.ClientSession, url: str) -> Scrape:
    async with http.get(url) as resp:
        resp.raise_for_status()
        return Scrape.parse(await resp.text())
