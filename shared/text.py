"""Text as PostgreSQL can store it: no NUL, nothing that cannot be encoded as UTF-8.

PostgreSQL `text` and `jsonb` reject U+0000 (whether it came raw or as the JSON
escape `\\u0000`, which decode to the same character), and a lone surrogate
cannot be encoded as UTF-8 at all. Both are replaced by U+FFFD, the Unicode
replacement character, so the rest of the value survives; everything else is
kept exactly as it is.
"""

from __future__ import annotations

import re
from typing import Any

REPLACEMENT = "\ufffd"
# NUL and every UTF-16 surrogate code point; a valid pair never reaches us as two code
# points (Python decodes it to one astral character), so any surrogate left is a lone one.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def clean_text(value: str) -> str:
    """`value` with NUL and lone surrogates replaced by U+FFFD; clean text is returned as is."""
    if value.isascii():
        # The common case, at C speed: only NUL can be wrong in ASCII.
        return value.replace("\x00", REPLACEMENT) if "\x00" in value else value
    return _UNSTORABLE.sub(REPLACEMENT, value)


def clean_optional(value: str | None) -> str | None:
    return None if value is None else clean_text(value)


def clean_json(value: Any) -> Any:
    """A JSON-like value (dicts, lists, scalars) with every string, keys included, cleaned.

    Containers are rebuilt; other values (numbers, booleans, None, dates) are kept. A
    structure deeper than the interpreter's recursion limit raises `RecursionError`.
    """
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {
            (clean_text(k) if isinstance(k, str) else k): clean_json(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    return value
