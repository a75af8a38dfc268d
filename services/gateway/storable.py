"""What every consumer downstream can read and store: checked on the decoded submission.

A job is wrapped in an envelope, parsed again by pydantic in every consumer, encoded by
`json` and stored as PostgreSQL text and jsonb. Each of them refuses something JSON allows:
NUL characters (text, jsonb), lone surrogates (UTF-8), NaN and Infinity (jsonb), integers
past 64 bits (other teams' consumers, the SDK's seed), and nesting past a parser's recursion
limit. Refusing them at submit means an accepted job can always run or fail visibly.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

# NUL and the UTF-16 surrogate range: after decoding, a surrogate in a str is a lone one.
_UNSTORABLE_CHAR = re.compile("[\x00\ud800-\udfff]")
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
# pydantic's JSON parser stops at 200 levels; the envelope adds its own above the body.
ENVELOPE_LEVELS = 2
PARSER_DEPTH_LIMIT = 200


@dataclass(frozen=True, slots=True)
class Unstorable:
    """The first value downstream could not read, where it is and why."""

    loc: tuple[str | int, ...]
    msg: str
    type: str

    def as_error(self) -> dict[str, Any]:
        return {"loc": ["body", *self.loc], "msg": self.msg, "type": self.type}


def check_text(value: str, loc: tuple[str | int, ...]) -> Unstorable | None:
    """A string stored as text: no NUL, no lone surrogate."""
    found = _UNSTORABLE_CHAR.search(value)
    if found is None:
        return None
    if found.group() == "\x00":
        return Unstorable(loc, "NUL character (U+0000)", "nul_character")
    return Unstorable(loc, "lone surrogate (not UTF-8)", "lone_surrogate")


def check_json(
    value: Any, loc: tuple[str | int, ...], *, depth: int, max_depth: int
) -> Unstorable | None:
    """A decoded JSON value stored as jsonb, at nesting `depth` (the body object is 1)."""
    if isinstance(value, str):
        return check_text(value, loc)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        if INT_MIN <= value <= INT_MAX:
            return None
        return Unstorable(loc, "integer outside the signed 64-bit range", "number_out_of_range")
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return Unstorable(loc, "NaN and Infinity cannot be stored", "number_not_finite")
    if isinstance(value, dict | list):
        if depth > max_depth:
            return Unstorable(loc, f"nested deeper than {max_depth} levels", "json_too_deep")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            here = (*loc, key)
            if isinstance(key, str) and (bad := check_json(key, here, depth=depth, max_depth=0)):
                return Unstorable(here, f"key: {bad.msg}", bad.type)
            if bad := check_json(item, here, depth=depth + 1, max_depth=max_depth):
                return bad
    return None
