"""Prices from the workload file: lookup by model and upstream, snapshots, refusals, cost."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from shared.prices import Price, Prices, Usage, cost_usd, load_prices
from shared.workloads import WorkloadFileError

D = Decimal


def prices(models: dict[str, Any]) -> Prices:
    return Prices.of({"models": models})


TABLE = prices(
    {
        "gpt-4o": {
            "price": {"input": 2.5, "output": 10, "cached_input": 1.25},
            "upstreams": [
                {"name": "openai"},
                {"name": "azure", "price": {"input": 2, "output": 8}},
            ],
        },
        "gpt-4o-mini": {"price": {"input": 0.15, "output": 0.6}},
        "llama-3": {"upstreams": [{"name": "vllm"}]},  # served, but priced nowhere
        "*": {"upstreams": [{"name": "default"}]},
    }
)


def test_a_model_costs_its_own_price_and_an_upstream_may_override_it() -> None:
    assert TABLE.price_of("gpt-4o") == Price(D("2.5"), D("10"), D("1.25"))
    assert TABLE.price_of("gpt-4o", "openai") == TABLE.price_of("gpt-4o")
    assert TABLE.price_of("gpt-4o", "azure") == Price(D("2"), D("8"))
    assert TABLE.price_of("gpt-4o", "unknown-upstream") == TABLE.price_of("gpt-4o")


def test_a_dated_snapshot_costs_as_its_family_and_nothing_else_does() -> None:
    assert TABLE.price_of("gpt-4o-2024-08-06") == TABLE.price_of("gpt-4o")
    assert TABLE.price_of("gpt-4o-mini-2024-07-18") == TABLE.price_of("gpt-4o-mini")
    assert TABLE.family("gpt-4o-0613") == "gpt-4o"
    assert TABLE.price_of("gpt-4o-audio-preview") is None  # another model, not a snapshot


def test_a_model_priced_nowhere_has_no_price_not_a_default() -> None:
    assert TABLE.price_of("model-nobody-priced") is None
    assert TABLE.price_of("llama-3", "vllm") is None
    assert TABLE.price_of(None) is None
    assert TABLE.label("model-nobody-priced") == TABLE.label("llama-3") == "other"
    assert TABLE.label("gpt-4o-2024-08-06") == "gpt-4o"


def test_a_priced_catch_all_is_the_operators_explicit_choice() -> None:
    table = prices({"*": {"price": {"input": 1, "output": 1}}})
    assert table.price_of("anything") == Price(D(1), D(1))


def test_the_packaged_file_prices_the_four_known_models() -> None:
    table = load_prices()
    for model in ("gpt-4o-mini", "gpt-4o", "gpt-4.1", "gpt-4.1-mini"):
        assert table.price_of(model) is not None, model
    assert table.price_of("model-nobody-priced") is None


def test_cached_and_reasoning_tokens_are_priced_at_their_own_rates() -> None:
    price = Price(D(1), D(4), cached_input=D("0.5"), reasoning=D(8))
    usage = Usage(
        prompt_tokens=1000, completion_tokens=300, cached_tokens=400, reasoning_tokens=100
    )
    # 600 x 1 + 400 x 0.5 + 200 x 4 + 100 x 8, per million
    assert cost_usd(price, usage) == D("0.0024")


def test_without_their_own_rates_cached_and_reasoning_tokens_cost_as_input_and_output() -> None:
    price = Price(D(1), D(4))
    with_details = Usage(1000, 300, cached_tokens=400, reasoning_tokens=100)
    assert cost_usd(price, with_details) == cost_usd(price, Usage(1000, 300)) == D("0.0022")


def test_details_larger_than_their_totals_are_capped() -> None:
    price = Price(D(1), D(1), cached_input=D(0), reasoning=D(0))
    assert cost_usd(price, Usage(10, 10, cached_tokens=50, reasoning_tokens=50)) == 0


@pytest.mark.parametrize(
    ("models", "says"),
    [
        ({"m": "x"}, 'models."m"] must be a table'),
        ({"m": {"price": 3}}, "must be a table of USD"),
        ({"m": {"price": {"input": 1}}}, "needs output"),
        ({"m": {"price": {"input": 1, "output": -1}}}, "price.output must be a number >= 0"),
        ({"m": {"price": {"input": "1", "output": 1}}}, "price.input must be a number"),
        ({"m": {"price": {"input": True, "output": 1}}}, "price.input must be a number"),
        ({"m": {"price": {"input": 1, "output": 1, "image": 2}}}, "unknown keys ['image']"),
        ({"m": {"upstreams": {"name": "x"}}}, "upstreams must be an array"),
        (
            {"m": {"upstreams": [{"name": "u", "price": {"output": 1}}]}},
            "upstreams[u].price needs input",
        ),
    ],
)
def test_a_bad_price_is_refused_with_where_it_is(models: dict[str, Any], says: str) -> None:
    with pytest.raises(WorkloadFileError) as refused:
        prices(models)
    assert says in str(refused.value)
