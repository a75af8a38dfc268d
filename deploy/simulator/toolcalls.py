"""Tool calls the simulator answers with: which tools, their ids and argument fragments.

A request with `tools` (and a `tool_choice` other than "none") is answered with one
call; a `[[sim tool_calls=N]]` directive asks for N (0: none, whatever the tools). The
arguments are a JSON document valid for the tool's `parameters` schema (where simple),
cut into word-sized fragments that concatenate back to it, as a real model streams them.
The calls follow the text tokens, if any; `cut_after` and `hang_after` count text tokens.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from deploy.simulator import jsongen

# The tool a directive calls when the request declares none.
DEFAULT_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "lookup",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    },
}
_EMPTY_OBJECT: dict[str, Any] = {"type": "object", "properties": {}}


class InvalidTools(ValueError):
    """`tools` or `tool_choice` is not what OpenAI accepts: a 400."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class ToolCallPlan:
    id: str
    name: str
    fragments: tuple[str, ...]  # the arguments' JSON text, cut into streamed pieces

    @property
    def arguments(self) -> str:
        return "".join(self.fragments)


def parse_tools(raw: object) -> tuple[dict[str, Any], ...]:
    """The request's function tools; each must name its function."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidTools("tools must be an array", "tools")
    for i, tool in enumerate(raw):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidTools(f"tools[{i}] must be a function tool with a name", f"tools[{i}]")
    return tuple(raw)


def _chosen(tools: Sequence[dict[str, Any]], tool_choice: object) -> list[dict[str, Any]]:
    """The tools a call may use: the named one when `tool_choice` names one, else all."""
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        named = [t for t in tools if t["function"]["name"] == name]
        if not named:
            raise InvalidTools(f"tool_choice names no declared tool: {name!r}", "tool_choice")
        return named
    return list(tools) or [DEFAULT_TOOL]


def wanted_calls(
    tools: Sequence[dict[str, Any]], tool_choice: object, directive: int | None
) -> int:
    if directive is not None:
        return directive
    return 1 if tools and tool_choice != "none" else 0


def plan_tool_calls(
    tools: Sequence[dict[str, Any]],
    tool_choice: object,
    count: int,
    rng: random.Random,
    words: Sequence[str],
) -> tuple[ToolCallPlan, ...]:
    """`count` calls, cycling over the tools allowed; the same rng state gives the same calls."""
    if count == 0:
        return ()
    allowed = _chosen(tools, tool_choice) if tools else [DEFAULT_TOOL]
    calls = []
    for i in range(count):
        function = allowed[i % len(allowed)]["function"]
        schema = function.get("parameters")
        if not isinstance(schema, dict) or schema.get("type", "object") != "object":
            schema = _EMPTY_OBJECT  # arguments are always a JSON object
        doc = jsongen.document({"type": "object", **schema}, rng, words)
        calls.append(
            ToolCallPlan(
                id=f"call_{rng.getrandbits(96):024x}",
                name=function["name"],
                fragments=jsongen.tokens(doc),
            )
        )
    return tuple(calls)
