"""docs/operations.md lists every metric the services export, with its type."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from services.gateway.metrics import GatewayMetrics
from services.notifier.metrics import NotifierMetrics
from services.results.metrics import ResultsMetrics
from services.streamer.metrics import StreamerMetrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def families() -> dict[str, str]:
    """Metric family name (as exposed, `_total` for counters) -> its type."""
    out: dict[str, str] = {}
    for build in (StreamerMetrics, GatewayMetrics, ResultsMetrics, NotifierMetrics):
        registry = CollectorRegistry()
        build(registry)
        for family in registry.collect():
            name = family.name + ("_total" if family.type == "counter" else "")
            out[name] = family.type
    return out


def test_every_exported_metric_is_documented_with_its_type() -> None:
    rows = dict(re.findall(r"^\| `(streamjobs_[a-z_]+)` \| ([a-z]+) \|", DOC.read_text(), re.M))
    exported = families()
    missing = sorted(set(exported) - set(rows))
    assert not missing, f"metrics missing from docs/operations.md: {missing}"
    stale = sorted(set(rows) - set(exported))
    assert not stale, f"docs/operations.md lists metrics no service exports: {stale}"
    wrong = {n: (rows[n], t) for n, t in exported.items() if rows[n] != t}
    assert not wrong, f"documented type differs (doc, code): {wrong}"
