"""Structured outputs: a deterministic JSON document valid for a (small) JSON Schema.

Covers what OpenAI's strict `json_schema` response formats use: object, array,
string (with enum), number, integer, boolean, null, and `anyOf`/`enum`/`const`.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from typing import Any


class InvalidResponseFormat(ValueError):
    """A `response_format` the simulator cannot answer: a 400, as OpenAI gives."""


_PIECE = re.compile(r"\s*(?:\w+|[^\w\s])")
_MAX_DEPTH = 8


def _bounds(schema: dict[str, Any], low: float, high: float) -> tuple[float, float]:
    lo = schema.get("minimum", schema.get("exclusiveMinimum", low))
    hi = schema.get("maximum", schema.get("exclusiveMaximum", max(high, lo)))
    return float(lo), float(max(hi, lo))


def document(schema: Any, rng: random.Random, words: Sequence[str], depth: int = 0) -> Any:
    """A value valid for `schema`, drawn from `rng` (the same seed gives the same value)."""
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return None
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return document(options[0], rng, words, depth + 1)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties") or {}
        return {name: document(sub, rng, words, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        low = int(schema.get("minItems", 1))
        high = int(schema.get("maxItems", max(low, 3)))
        return [
            document(schema.get("items", {}), rng, words, depth + 1)
            for _ in range(rng.randint(low, max(low, high)))
        ]
    if kind == "integer":
        lo, hi = _bounds(schema, 0, 10_000)
        return rng.randint(int(lo), int(hi))
    if kind == "number":
        lo, hi = _bounds(schema, 0, 100)
        return round(rng.uniform(lo, hi), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    text = " ".join(rng.choice(words) for _ in range(rng.randint(2, 6)))
    return text.capitalize()


def tokens(value: Any) -> tuple[str, ...]:
    """The value's JSON text cut into word-sized tokens; joined, they give the text back."""
    return tuple(_PIECE.findall(json.dumps(value, ensure_ascii=False)))


def response_schema(response_format: object) -> dict[str, Any] | None:
    """The schema of a `{"type": "json_schema", "json_schema": {"schema": {...}}}` format.

    Raises InvalidResponseFormat for a json_schema format without a schema; None for others.
    """
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return {"type": "object", "properties": {}}
    if kind != "json_schema":
        return None
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise InvalidResponseFormat("response_format.json_schema.schema must be an object")
    return schema
