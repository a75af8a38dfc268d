"""Benchmark figures: what was measured, against which target, written to bench-results.json."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Figure:
    name: str
    value: float
    unit: str
    target: str  # as DESIGN.md states it, e.g. "<= 100"
    note: str = ""

    def met(self) -> bool | None:
        """Whether the value meets the target, when the target is a plain bound."""
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


def render(figures: list[Figure]) -> str:
    rows = [f"{'figure':<52} {'value':>12} {'unit':<10} {'target':<12} ok"]
    for f in figures:
        met = f.met()
        mark = "-" if met is None else ("yes" if met else "NO")
        rows.append(f"{f.name:<52} {f.value:>12.3f} {f.unit:<10} {f.target:<12} {mark}")
        if f.note:
            rows.append(f"    {f.note}")
    return "\n".join(rows)


def write(figures: list[Figure], path: Path) -> None:
    """Merge into `path`: figures of this run replace those of the same name."""
    existing: dict[str, dict[str, object]] = {}
    if path.exists():
        existing = {f["name"]: f for f in json.loads(path.read_text()).get("figures", [])}
    existing.update({f.name: asdict(f) for f in figures})
    path.write_text(json.dumps({"figures": list(existing.values())}, indent=2) + "\n")
