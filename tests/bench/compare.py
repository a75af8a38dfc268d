"""`make bench BASE=old.json`: each figure of this run beside the same-named one of an older run."""

from __future__ import annotations

import math

from tests.bench.figures import Figure, number

MISSING = "missing"


def ratio(old: float, new: float) -> float:
    """new / old; NaN when either is not available or the old one is zero."""
    if math.isnan(old) or math.isnan(new) or old == 0:
        return math.nan
    return new / old


def compare(old: list[Figure], new: list[Figure]) -> str:
    """A table matched by name: this run's figures in their order, then those only in `old`.

    A figure absent on one side prints `missing` there; its ratio is left empty.
    """
    before = {f.name: f for f in old}
    now = {f.name: f for f in new}
    rows = [
        f"{'figure':<60} {'base':>12} {'new':>12} {'new/base':>9} {'unit':<10} {'target':<12} ok"
    ]
    names = [f.name for f in new] + [f.name for f in old if f.name not in now]
    for name in names:
        a, b = before.get(name), now.get(name)
        shown = b or a
        assert shown is not None  # every name comes from one side or the other
        old_text = number(a.value) if a else MISSING
        new_text = number(b.value) if b else MISSING
        r = ratio(a.value, b.value) if a and b else math.nan
        ratio_text = "" if math.isnan(r) else f"{r:.2f}x"
        met = b.met() if b else None
        mark = "-" if met is None else ("yes" if met else "NO")
        rows.append(
            f"{name:<60} {old_text:>12} {new_text:>12} {ratio_text:>9} {shown.unit:<10}"
            f" {shown.target:<12} {mark}"
        )
    return "\n".join(rows)
