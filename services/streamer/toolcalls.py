"""Tool-call deltas as they stream: read from an event, merged into chunks, assembled at the end.

A delta is a plain dict in the shape of `shared.contracts.ToolCallDelta` (index, id, type,
function: {name, arguments}), so chunk records are encoded with orjson like the text and
read back by pydantic unchanged. Only events that carry `tool_calls` pay for any of this.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shared.contracts import ToolCall, ToolCallFunction

Delta = dict[str, Any]


def _optional_str(value: object) -> str | None:
    if value is None or type(value) is str:
        return value
    raise TypeError(f"expected a string, got {type(value).__name__}")


def read_deltas(raw: object) -> list[Delta]:
    """The deltas of one event's `delta.tool_calls`; raises TypeError for other shapes.

    A server that leaves out `index` (some do, with one call per event) gets the
    delta's place in the list.
    """
    if type(raw) is not list:
        raise TypeError("tool_calls is not a list")
    out = []
    for position, item in enumerate(raw):
        index = item.get("index", position)
        if type(index) is not int or index < 0:
            raise TypeError("tool call index is not a non-negative integer")
        function = item.get("function")
        if function is not None:
            function = {
                "name": _optional_str(function.get("name")),
                "arguments": _optional_str(function.get("arguments")),
            }
        out.append(
            {
                "index": index,
                "id": _optional_str(item.get("id")),
                "type": _optional_str(item.get("type")),
                "function": function,
            }
        )
    return out


def merge(deltas: Iterable[Delta]) -> list[Delta]:
    """Consecutive deltas of the same call as one: their argument pieces concatenated.

    A chunk then carries one delta per call it touched, as it carries one text for its
    tokens; concatenated in order, the merged deltas say what the originals said.
    """
    out: list[Delta] = []
    for delta in deltas:
        last = out[-1] if out else None
        if last is None or last["index"] != delta["index"] or (delta["id"] and last["id"]):
            out.append({**delta, "function": dict(delta["function"] or {}) or None})
            continue
        last["id"] = last["id"] or delta["id"]
        last["type"] = last["type"] or delta["type"]
        function = delta["function"]
        if function:
            mine = last["function"] or {"name": None, "arguments": None}
            mine["name"] = mine["name"] or function["name"]
            if function["arguments"]:
                mine["arguments"] = (mine["arguments"] or "") + function["arguments"]
            last["function"] = mine
    return out


def assemble(deltas: Iterable[Delta]) -> list[ToolCall]:
    """The calls the deltas describe, by index: id, type and name from the first piece that
    has them, the arguments concatenated."""
    calls: dict[int, dict[str, Any]] = {}
    for delta in deltas:
        call = calls.setdefault(delta["index"], {"id": "", "type": "", "name": "", "args": []})
        call["id"] = call["id"] or delta["id"] or ""
        call["type"] = call["type"] or delta["type"] or ""
        function = delta["function"]
        if function:
            call["name"] = call["name"] or function["name"] or ""
            if function["arguments"]:
                call["args"].append(function["arguments"])
    return [
        ToolCall(
            id=call["id"],
            type=call["type"] or "function",
            function=ToolCallFunction(name=call["name"], arguments="".join(call["args"])),
        )
        for _, call in sorted(calls.items())
    ]
