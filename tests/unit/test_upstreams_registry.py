"""The upstream registry of the workload file: what it refuses, and the order it routes in."""

from __future__ import annotations

import random
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from shared import upstreams
from shared.upstreams import Registry, parse
from shared.workloads import WorkloadFileError


def registry(text: str) -> Registry:
    return parse(tomllib.loads(text).get("models", {}))


TWO_UPSTREAMS = """
[models."a"]
fallback = "b"
on_interrupt = "continue"
price = { input = 1.0, output = 2.0 }
[[models."a".upstreams]]
name = "heavy"
base_url = "http://heavy/v1"
weight = 3
[[models."a".upstreams]]
name = "light"
base_url = "http://light/v1"
weight = 1
price = { input = 0.5, output = 1.0, cached_input = 0.25 }

[models."b"]
[[models."b".upstreams]]
name = "other"
base_url = "http://other/v1"
"""


def test_the_packaged_file_routes_every_known_model_and_any_other_to_the_simulator() -> None:
    r = upstreams.load()
    for model in ("gpt-4o-mini", "gpt-4o", "gpt-4.1", "gpt-4.1-mini", "made-up"):
        route = r.route(model)
        assert [(h.model, h.upstream.name, h.upstream.base_url) for h in route] == [
            (model, "simulator", "")
        ]
    assert r.entry("gpt-4o-mini").price["input"] == 0.15  # type: ignore[index, union-attr]
    assert r.entry("made-up").price is None  # type: ignore[union-attr]
    assert list(r.upstreams) == ["simulator"]


def test_route_tries_every_upstream_of_the_model_then_the_fallback_models() -> None:
    r = registry(TWO_UPSTREAMS)
    route = r.route("a", random.Random(1))
    assert {h.upstream.name for h in route[:2]} == {"heavy", "light"}
    assert [(h.model, h.upstream.name) for h in route[2:]] == [("b", "other")]


def test_the_first_upstream_is_drawn_by_weight() -> None:
    r = registry(TWO_UPSTREAMS)
    rng = random.Random(7)
    firsts = Counter(r.route("a", rng)[0].upstream.name for _ in range(4000))
    assert 0.70 < firsts["heavy"] / 4000 < 0.80  # weight 3 of 4


def test_an_unknown_model_falls_to_the_catch_all_and_without_one_has_no_route() -> None:
    with_catch_all = registry(TWO_UPSTREAMS + '[models."*"]\n[[models."*".upstreams]]\nname="d"\n')
    assert [(h.model, h.upstream.name) for h in with_catch_all.route("zzz")] == [("zzz", "d")]
    plain = registry(TWO_UPSTREAMS)
    assert plain.route("zzz") == [] and not plain.knows("zzz")


def test_on_interrupt_is_the_jobs_then_the_models_then_restart() -> None:
    r = registry(TWO_UPSTREAMS)
    assert r.on_interrupt("a") == "continue"
    assert r.on_interrupt("a", "restart") == "restart"
    assert r.on_interrupt("b") == "restart"
    assert r.on_interrupt("b", "continue") == "continue"


def test_a_price_is_refused_as_the_price_table_refuses_it_and_reasoning_is_one() -> None:
    table = '[models."a"]\n[[models."a".upstreams]]\nname = "u"\n'
    priced = registry(table + "[models.a.price]\ninput = 1\noutput = 2\nreasoning = 3\n")
    assert priced.entry("a").price == {"input": 1, "output": 2, "reasoning": 3}  # type: ignore[union-attr]
    with pytest.raises(WorkloadFileError, match="price needs output"):
        registry(table + "[models.a.price]\ninput = 1\n")


def test_a_name_shared_by_two_models_is_one_upstream_when_it_names_one_server() -> None:
    r = registry(
        '[models."x"]\n[[models."x".upstreams]]\nname = "s"\nbase_url = "http://s/v1"\n'
        '[models."y"]\n[[models."y".upstreams]]\nname = "s"\nbase_url = "http://s/v1"\n'
    )
    assert list(r.upstreams) == ["s"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[models."x"]\n[[models."x".upstreams]]\nbase_url = "http://s/v1"\n', "has no name"),
        ('[models."x"]\nfallback = "y"\n', "upstreams"),
        (
            '[models."x"]\n[[models."x".upstreams]]\nname = "s"\n'
            '[[models."x".upstreams]]\nname = "s"\n',
            "names upstream 's' twice",
        ),
        (
            '[models."x"]\n[[models."x".upstreams]]\nname = "s"\nbase_url = "http://1/v1"\n'
            '[models."y"]\n[[models."y".upstreams]]\nname = "s"\nbase_url = "http://2/v1"\n',
            "duplicate upstream name 's'",
        ),
        ('[models."x"]\n[[models."x".upstreams]]\nname = "s"\nweight = 0\n', "weight"),
        ('[models."x"]\n[[models."x".upstreams]]\nname = "s"\nweight = -1\n', "weight"),
        (
            '[models."x"]\nfallback = "nope"\n[[models."x".upstreams]]\nname = "s"\n',
            "falls back to 'nope', which has no entry",
        ),
        (
            '[models."x"]\nfallback = "y"\n[[models."x".upstreams]]\nname = "s"\n'
            '[models."y"]\nfallback = "x"\n[[models."y".upstreams]]\nname = "t"\n',
            "fallback cycle",
        ),
        (
            '[models."x"]\nfallback = "x"\n[[models."x".upstreams]]\nname = "s"\n',
            "fallback cycle: x -> x",
        ),
        (
            '[models."x"]\non_interrupt = "resume"\n[[models."x".upstreams]]\nname = "s"\n',
            "on_interrupt",
        ),
        ('[models."x"]\nretries = 3\n[[models."x".upstreams]]\nname = "s"\n', "retries"),
        ("[models]\nx = 3\n", "must be a table"),
    ],
    ids=[
        "missing-name",
        "no-upstreams",
        "name-twice-in-a-model",
        "duplicate-name-other-server",
        "weight-zero",
        "weight-negative",
        "unknown-fallback",
        "fallback-cycle",
        "fallback-to-itself",
        "bad-on-interrupt",
        "unknown-key",
        "not-a-table",
    ],
)
def test_a_bad_models_entry_is_refused_naming_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(WorkloadFileError, match=message.replace("(", r"\(")) as caught:
        registry(text)
    assert "models" in str(caught.value) or "cycle" in str(caught.value)


def test_a_file_on_disk_loads_through_the_workload_loader(tmp_path: Path) -> None:
    path = tmp_path / "workloads.toml"
    path.write_text(TWO_UPSTREAMS)
    assert [h.upstream.name for h in upstreams.load(path).route("b")] == ["other"]
