"""`make bench BASE=...`: figures matched by name, old beside new with their ratio."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tests.bench.compare import compare
from tests.bench.figures import Figure, load, render, write


def row(table: str, name: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(name))


def test_a_figure_in_both_runs_prints_old_new_and_their_ratio() -> None:
    old = [Figure("gateway p99", 200.0, "ms", "<= 10")]
    new = [Figure("gateway p99", 50.0, "ms", "<= 10")]
    line = row(compare(old, new), "gateway p99")
    assert "200.000" in line
    assert "50.000" in line
    assert "0.25x" in line
    assert line.rstrip().endswith("NO")


def test_figures_missing_on_one_side_print_as_missing_without_a_ratio() -> None:
    old = [Figure("only old", 1.0, "ms", "-")]
    new = [Figure("only new", 2.0, "ms", "-")]
    table = compare(old, new)
    assert row(table, "only new").split()[2] == "missing"
    assert row(table, "only old").split()[3] == "missing"
    assert "x " not in row(table, "only new") + row(table, "only old")


def test_this_runs_figures_come_first_in_their_order_then_the_old_ones() -> None:
    old = [Figure("b", 1.0, "", "-"), Figure("z", 1.0, "", "-")]
    new = [Figure("c", 1.0, "", "-"), Figure("b", 2.0, "", "-")]
    names = [line.split()[0] for line in compare(old, new).splitlines()[1:]]
    assert names == ["c", "b", "z"]


def test_a_figure_not_available_prints_na_and_no_ratio() -> None:
    old = [Figure("lag", 3.0, "ms", "<= 50")]
    new = [Figure("lag", math.nan, "ms", "<= 50", "not available: no metric")]
    line = row(compare(old, new), "lag")
    assert "n/a" in line
    assert "x " not in line
    assert line.rstrip().endswith("-")


def test_results_round_trip_through_json_with_null_for_not_available(tmp_path: Path) -> None:
    path = tmp_path / "bench-results.json"
    write([Figure("a", 1.5, "ms", "<= 2"), Figure("b", math.nan, "ms", "-", "why")], path)
    raw = json.loads(path.read_text())
    assert [f["value"] for f in raw["figures"]] == [1.5, None]
    back = load(path)
    assert back[0] == Figure("a", 1.5, "ms", "<= 2")
    assert math.isnan(back[1].value)
    assert "n/a" in row(render(back), "b")


def test_a_later_run_replaces_figures_of_the_same_name_and_keeps_the_others(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bench-results.json"
    write([Figure("a", 1.0, "", "-"), Figure("b", 1.0, "", "-")], path)
    write([Figure("b", 2.0, "", "-")], path)
    assert {f.name: f.value for f in load(path)} == {"a": 1.0, "b": 2.0}
