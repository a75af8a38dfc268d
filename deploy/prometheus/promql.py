"""Which metric names a PromQL expression reads, and which names a registry exports.

A small tokenizer, good enough for our rules and dashboard: it skips strings, label
matchers, range selectors, grouping label lists and Grafana variables, and counts an
identifier as a metric name when it is not a function, keyword or label name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from prometheus_client import CollectorRegistry

KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "atan2",
        "inf",
        "nan",
    }
)
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})

# Series every Prometheus target has without the service exporting them.
SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS"})

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<var>\$\{[^}]*\}|\$\w+)
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+(?![\w.]))
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<punct>[{}()\[\],@]|=~|!~|!=|==|<=|>=|[-+*/%^<>=])
    """,
    re.VERBOSE,
)


class PromQLSyntaxError(ValueError):
    pass


def tokens(expr: str) -> list[tuple[str, str]]:
    """`(kind, text)` pairs of `expr`, whitespace dropped."""
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise PromQLSyntaxError(f"cannot read {expr[pos : pos + 20]!r} in {expr!r}")
        kind = m.lastgroup or ""
        if kind != "space":
            out.append((kind, m.group()))
        pos = m.end()
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names `expr` selects (`foo_total` in `rate(foo_total{a="b"}[5m])`)."""
    toks = tokens(expr)
    names: set[str] = set()
    braces = brackets = 0
    skip_parens = 0  # depth inside a grouping label list: `by (a, b)`
    expect_grouping = False
    for i, (kind, text) in enumerate(toks):
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "punct":
            if text == "{":
                braces += 1
            elif text == "}":
                braces -= 1
            elif text == "[":
                brackets += 1
            elif text == "]":
                brackets -= 1
            elif text == "(" and expect_grouping:
                skip_parens, expect_grouping = 1, False
            elif text == "(" and skip_parens:
                skip_parens += 1
            elif text == ")" and skip_parens:
                skip_parens -= 1
            continue
        if kind != "ident" or braces or brackets or skip_parens:
            continue
        lowered = text.lower()
        if lowered in GROUPING:
            expect_grouping = nxt == "("
            continue
        if lowered in KEYWORDS or nxt == "(" or nxt.lower() in ("by", "without"):
            continue  # a keyword, a function call, or an aggregation: `sum by (a) (...)`
        names.add(text)
    if braces or brackets or skip_parens:
        raise PromQLSyntaxError(f"unbalanced brackets in {expr!r}")
    return names


def exported_names(registry: CollectorRegistry) -> set[str]:
    """Every series name `registry` can expose, whether or not a labelled child exists yet."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
        "info": ("_info",),
        "stateset": ("",),
        "gauge": ("",),
        "unknown": ("",),
    }
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def unknown_names(exprs: Iterable[str], exported: set[str]) -> dict[str, set[str]]:
    """For each expression, the metric names it reads that nothing exports."""
    out: dict[str, set[str]] = {}
    for expr in exprs:
        missing = metric_names(expr) - exported - SYNTHETIC
        if missing:
            out[expr] = missing
    return out
