"""The PromQL tokenizer that finds the metric names our alerts and dashboard read."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from deploy.prometheus.promql import (
    PromQLSyntaxError,
    exported_names,
    metric_names,
    tokens,
    unknown_names,
)


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("foo_total", {"foo_total"}),
        ('rate(foo_total{job="a", kind=~"x|y"}[5m])', {"foo_total"}),
        (
            "histogram_quantile(0.95, sum by (priority, le) (rate(wait_seconds_bucket[5m]))) > 5",
            {"wait_seconds_bucket"},
        ),
        ("sum(rate(a_total[$__rate_interval])) by (band, le)", {"a_total"}),
        ("a / on(job) group_left(instance, band) b", {"a", "b"}),
        ("a and ignoring (x) b or c unless d", {"a", "b", "c", "d"}),
        ('absent(up{job="streamer"} == 1)', {"up"}),
        ("x offset 1h30m > bool 1e-9", {"x"}),
        ("min_over_time(state[2m:30s]) >= 1", {"state"}),
        ("max without (instance) (g) * 100", {"g"}),
        ('label_replace(m, "dst", "$1", "src", "(.*)")', {"m"}),
        ('sum(rate(by_total{route="/by"}[5m]))', {"by_total"}),
        ("topk(5, sum by (route) (rate(r_total[${__range}])))", {"r_total"}),
        ('vector(1) + count_values by (v) ("value", z)', {"z"}),
        ("abc:rate5m + 0x1F - .5", {"abc:rate5m"}),
    ],
)
def test_metric_names_are_the_selected_series_only(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_label_names_and_string_contents_are_not_metrics() -> None:
    expr = 'sum by (route, status) (rate(http_total{route="rate(x_total[5m])", status!~"2.."}[1m]))'
    assert metric_names(expr) == {"http_total"}


@pytest.mark.parametrize("expr", ["rate(foo[5m)", 'foo{a="b"', "sum by (a (foo)"])
def test_unbalanced_expressions_are_refused(expr: str) -> None:
    with pytest.raises(PromQLSyntaxError):
        metric_names(expr)


def test_unreadable_text_is_refused_with_its_position() -> None:
    with pytest.raises(PromQLSyntaxError, match="#"):
        tokens("foo # bar")


def test_exported_names_include_suffixes_of_unlabelled_and_labelled_families() -> None:
    registry = CollectorRegistry()
    Counter("jobs_total", "", ("band",), registry=registry)
    Histogram("wait_seconds", "", ("band",), registry=registry)
    Gauge("lag_records", "", registry=registry)
    names = exported_names(registry)
    assert {
        "jobs_total",
        "wait_seconds_bucket",
        "wait_seconds_sum",
        "wait_seconds_count",
        "lag_records",
    } <= names
    assert "jobs" not in names
    assert "wait_seconds" not in names


def test_unknown_names_reports_only_what_nothing_exports() -> None:
    exprs = ["rate(jobs_total[5m])", "rate(jobs_typo_total[5m]) + up", "absent(up == 1)"]
    assert unknown_names(exprs, {"jobs_total"}) == {
        "rate(jobs_typo_total[5m]) + up": {"jobs_typo_total"}
    }
