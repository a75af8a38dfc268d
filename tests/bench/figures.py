"""Benchmark figures: what was measured, against which target, written to bench-results.json."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Figure:
    name: str
    value: float  # NaN: not available in this run (the note says why)
    unit: str
    target: str  # as DESIGN.md states it, e.g. "<= 100"
    note: str = ""

    @property
    def available(self) -> bool:
        return not math.isnan(self.value)

    def met(self) -> bool | None:
        """Whether the value meets the target, when the target is a plain bound."""
        if not self.available:
            return None
        op, _, bound = self.target.partition(" ")
        try:
            limit = float(bound)
        except ValueError:
            return None
        if op == "<=":
            return self.value <= limit
        if op == ">=":
            return self.value >= limit
        return None

    def to_json(self) -> dict[str, Any]:
        """JSON has no NaN: a figure not available is written with a null value."""
        out = asdict(self)
        if not self.available:
            out["value"] = None
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Figure:
        value = raw.get("value")
        return cls(
            name=str(raw["name"]),
            value=math.nan if value is None else float(value),
            unit=str(raw.get("unit", "")),
            target=str(raw.get("target", "-")),
            note=str(raw.get("note", "")),
        )


def not_available(name: str, unit: str, target: str, why: str) -> Figure:
    return Figure(name, math.nan, unit, target, f"not available: {why}")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def number(value: float) -> str:
    """A value as the tables print it: n/a when not available."""
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def render(figures: list[Figure]) -> str:
    rows = [f"{'figure':<60} {'value':>12} {'unit':<10} {'target':<12} ok"]
    for f in figures:
        met = f.met()
        mark = "-" if met is None else ("yes" if met else "NO")
        rows.append(f"{f.name:<60} {number(f.value):>12} {f.unit:<10} {f.target:<12} {mark}")
        if f.note:
            rows.append(f"    {f.note}")
    return "\n".join(rows)


def load(path: Path) -> list[Figure]:
    return [Figure.from_json(f) for f in json.loads(path.read_text()).get("figures", [])]


def write(figures: list[Figure], path: Path) -> None:
    """Merge into `path`: figures of this run replace those of the same name."""
    existing: dict[str, dict[str, Any]] = {}
    if path.exists():
        existing = {f.name: f.to_json() for f in load(path)}
    existing.update({f.name: f.to_json() for f in figures})
    path.write_text(json.dumps({"figures": list(existing.values())}, indent=2) + "\n")
