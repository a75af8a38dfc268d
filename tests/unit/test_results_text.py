"""shared.text: what reaches PostgreSQL holds no NUL and always encodes as UTF-8."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from shared.text import REPLACEMENT, clean_json, clean_text

# Every code point but NUL and the surrogates: text PostgreSQL stores as it is.
CLEAN = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"))
# Anything a Python str can hold, lone surrogates and NULs included.
ANY_TEXT = st.text(
    st.characters(codec=None, exclude_categories=()) | st.sampled_from("\x00\ud800\udbff\udc00")
)
JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=20,
)
BOUNDED = settings(max_examples=100, deadline=None)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@BOUNDED
@given(CLEAN)
def test_clean_text_round_trips_unchanged(text: str) -> None:
    assert clean_text(text) == text


@BOUNDED
@given(ANY_TEXT)
@example("\ud800\x00\udc00")
def test_cleaned_text_encodes_as_utf8_and_holds_no_nul(text: str) -> None:
    cleaned = clean_text(text)
    cleaned.encode("utf-8")  # raises on a lone surrogate
    assert "\x00" not in cleaned
    assert len(cleaned) == len(text)  # replaced one for one, nothing dropped


def test_nul_raw_or_from_the_json_escape_becomes_the_replacement_character() -> None:
    from_escape = json.loads('"a\\u0000b"')
    assert clean_text(from_escape) == clean_text("a\x00b") == f"a{REPLACEMENT}b"


def test_lone_surrogates_are_replaced_and_pairs_kept() -> None:
    assert clean_text("x\ud800y\udfffz") == f"x{REPLACEMENT}y{REPLACEMENT}z"
    assert clean_text("emoji \U0001f600 é") == "emoji \U0001f600 é"


@BOUNDED
@given(JSON)
def test_clean_json_cleans_every_key_and_value_and_keeps_the_shape(value: Any) -> None:
    cleaned = clean_json(value)
    for text in _strings(cleaned):
        text.encode("utf-8")
        assert "\x00" not in text
    # jsonb text of the cleaned value has neither NUL escapes nor unpaired surrogate escapes.
    encoded = json.dumps(cleaned, ensure_ascii=False)
    encoded.encode("utf-8")
    assert "\\u0000" not in encoded


@BOUNDED
@given(
    st.recursive(
        st.none() | st.integers() | CLEAN, lambda i: st.lists(i) | st.dictionaries(CLEAN, i)
    )
)
def test_clean_json_round_trips_clean_values(value: Any) -> None:
    assert clean_json(value) == value
