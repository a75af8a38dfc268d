"""What the simulator answers to one request, decided without I/O: tokens, timing and faults.

A request's completion is a pure function of (model, messages without `[[sim ...]]`
directives, settings seed); faults come from the directives of the last user
message, then from the configured random rates.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from deploy.simulator import jsongen, toolcalls
from deploy.simulator.settings import SimulatorSettings
from deploy.simulator.toolcalls import ToolCallPlan

DEFAULT_MAX_TOKENS = 256
FAIL_STATUSES = frozenset({429, 500, 503})
PROMPT_TOKENS_PER_MESSAGE = 4

_DIRECTIVE = re.compile(r"\[\[sim\b([^\]]*)\]\]")
_INT_KEYS = frozenset(
    {
        "tokens",
        "fail",
        "cut_after",
        "hang_after",
        "fail_times",
        "vary",
        "tool_calls",
        "cached",
        "reasoning",
    }
)
_FLOAT_KEYS = frozenset({"tps", "ttft_ms", "retry_after"})

_WORDS_TEXT = (
    "the quick brown fox jumps over lazy dog stream token event kafka partition offset "
    "consumer producer broker topic record message batch latency throughput window state "
    "store job queue priority retry backoff deadline signal socket client server request "
    "response header chunk buffer frame model prompt answer reason value system process "
    "thread task loop future result error status metric trace span log table index query "
    "commit rollback replica leader follower cluster node shard key hash ring clock time "
    "order sequence gap resume cursor snapshot journal ledger audit policy limit quota "
    "budget cost usage rate burst slot lane fair share weight scale load spike calm "
    "steady simple small clear fast safe real open close start stop drain flush"
)
WORDS = tuple(_WORDS_TEXT.split())


class InvalidRequest(ValueError):
    """The body is not a chat completion request the simulator understands: answered 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class Directives:
    """`[[sim key=value ...]]` from the last user message; None means "not given"."""

    tokens: int | None = None
    tps: float | None = None
    ttft_ms: float | None = None
    fail: int | None = None
    retry_after: float | None = None
    cut_after: int | None = None
    hang_after: int | None = None
    fail_times: int | None = None
    vary: int | None = None  # non-zero: every call answers other text, like a real model
    tool_calls: int | None = None  # answer with this many tool calls (0: none, despite tools)
    cached: int | None = None  # usage reports this many prompt tokens as cached
    reasoning: int | None = None  # usage reports this many completion tokens as reasoning

    @property
    def has_fault(self) -> bool:
        return self.fail is not None or self.cut_after is not None or self.hang_after is not None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: tuple[tuple[str, str], ...]  # (role, text content)
    stream: bool
    include_usage: bool
    max_tokens: int | None
    json_schema: dict[str, Any] | None = None  # structured output asked for
    tools: tuple[dict[str, Any], ...] = ()  # function tools declared
    tool_choice: object = None

    @property
    def last_user_text(self) -> str:
        for role, text in reversed(self.messages):
            if role == "user":
                return text
        return ""


@dataclass(frozen=True, slots=True)
class Plan:
    """The answer to one request: an error, or tokens with their timing and an optional cut."""

    tokens: tuple[int, ...] = ()  # indices into `Vocabulary`
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    ttft_s: float = 0.0
    interval_s: float = 0.0  # between tokens; 0 sends as fast as possible
    error_status: int | None = None
    retry_after_s: float = 0.0
    cut_after: int | None = None  # send this many tokens, then close the connection
    hang_after: int | None = None  # send this many tokens, then stall
    texts: tuple[str, ...] | None = None  # a structured output's tokens, instead of `tokens`
    tool_calls: tuple[ToolCallPlan, ...] = ()  # streamed after the text, if any
    cached_tokens: int | None = None  # usage's prompt_tokens_details, when asked for
    reasoning_tokens: int | None = None  # usage's completion_tokens_details, when asked for

    @property
    def count(self) -> int:
        return len(self.texts) if self.texts is not None else len(self.tokens)

    @property
    def completion_tokens(self) -> int:
        """Text tokens plus one per tool-call delta (a real model bills the arguments)."""
        return self.count + sum(len(c.fragments) + 1 for c in self.tool_calls)


class Vocabulary:
    """Token texts and their JSON encodings, built once so that a token costs a tuple lookup.

    Index 0 is ".", then three variants per word: " word", " Word", "Word".
    """

    PERIOD = 0

    def __init__(self, words: Sequence[str] = WORDS) -> None:
        texts = ["."]
        for word in words:
            texts += [" " + word, " " + word.capitalize(), word.capitalize()]
        self.size = len(words)
        self.texts: tuple[str, ...] = tuple(texts)
        self.encoded: tuple[bytes, ...] = tuple(json.dumps(t).encode() for t in texts)

    def generate(self, seed: int, count: int) -> tuple[int, ...]:
        """`count` tokens of sentence-like text, the same for the same seed."""
        rng = random.Random(seed)
        out: list[int] = []
        words_left = rng.randint(5, 14)
        capital = True
        for i in range(count):
            if words_left == 0:
                out.append(self.PERIOD)
                words_left = rng.randint(5, 14)
                capital = True
                continue
            base = 1 + 3 * rng.randrange(self.size)
            out.append(base + 2 if i == 0 else base + 1 if capital else base)
            capital = False
            words_left -= 1
        return tuple(out)

    def text(self, tokens: Sequence[int]) -> str:
        return "".join(self.texts[i] for i in tokens)


def strip_directives(text: str) -> str:
    return _DIRECTIVE.sub("", text).strip()


def parse_directives(text: str) -> Directives:
    values: dict[str, Any] = {}
    for match in _DIRECTIVE.finditer(text):
        for item in match.group(1).split():
            key, sep, raw = item.partition("=")
            if not sep:
                raise InvalidRequest(f"sim directive {item!r} is not key=value")
            convert: type[int] | type[float]
            if key in _INT_KEYS:
                convert = int
            elif key in _FLOAT_KEYS:
                convert = float
            else:
                known = ", ".join(sorted(_INT_KEYS | _FLOAT_KEYS))
                raise InvalidRequest(f"unknown sim directive {key!r} (known: {known})")
            try:
                value = convert(raw)
            except ValueError:
                raise InvalidRequest(f"sim directive {key}={raw!r} is not a number") from None
            if not math.isfinite(value) or value < 0:
                raise InvalidRequest(f"sim directive {key}={raw} must be a finite number >= 0")
            values[key] = value
    fail = values.get("fail")
    if fail is not None and fail not in FAIL_STATUSES:
        raise InvalidRequest(f"sim directive fail={fail}: use one of {sorted(FAIL_STATUSES)}")
    return Directives(**values)


def _message_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": "..."}]
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _optional_count(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"{name} must be a positive integer", name)
    return value


def parse_chat_request(body: object) -> ChatRequest:
    """The parts of an OpenAI chat completion request the simulator reads; others are ignored."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", "model")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise InvalidRequest("messages must be a non-empty array", "messages")
    messages: list[tuple[str, str]] = []
    for i, message in enumerate(raw_messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"messages[{i}] must be an object with a role", f"messages[{i}]")
        messages.append((message["role"], _message_text(message.get("content"))))
    options = body.get("stream_options")
    max_tokens = _optional_count(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _optional_count(body, "max_tokens")
    try:
        schema = jsongen.response_schema(body.get("response_format"))
    except jsongen.InvalidResponseFormat as exc:
        raise InvalidRequest(str(exc), "response_format") from None
    try:
        tools = toolcalls.parse_tools(body.get("tools"))
    except toolcalls.InvalidTools as exc:
        raise InvalidRequest(str(exc), exc.param) from None
    return ChatRequest(
        model=model,
        messages=tuple(messages),
        stream=body.get("stream") is True,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        max_tokens=max_tokens,
        json_schema=schema,
        tools=tools,
        tool_choice=body.get("tool_choice"),
    )


def _digest(model: str, messages: Sequence[tuple[str, str]]) -> bytes:
    raw = json.dumps([model, messages], separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(raw.encode(), digest_size=8).digest()


def content_seed(request: ChatRequest, seed: int) -> int:
    """The completion's seed: the model and the messages with their directives removed."""
    cleaned = [(role, strip_directives(text)) for role, text in request.messages]
    return int.from_bytes(_digest(request.model, cleaned), "big") ^ seed


def prompt_tokens(request: ChatRequest) -> int:
    return sum(len(text.split()) + PROMPT_TOKENS_PER_MESSAGE for _, text in request.messages)


class Planner:
    """Turns requests into plans; remembers how often a request was seen, for `fail_times`."""

    def __init__(self, settings: SimulatorSettings, vocabulary: Vocabulary) -> None:
        self._settings = settings
        self._vocabulary = vocabulary
        self._rng = random.Random(settings.seed)
        self._seen: dict[bytes, int] = {}
        self._calls = 0  # the nonce of `vary`: one per planned request

    def reset(self) -> None:
        self._seen.clear()
        self._calls = 0
        self._rng.seed(self._settings.seed)

    def _faults_apply(self, request: ChatRequest, directives: Directives) -> bool:
        if not directives.has_fault:
            return False
        if directives.fail_times is None:
            return True
        key = _digest(request.model, request.messages)
        seen = self._seen.get(key, 0)
        self._seen[key] = seen + 1
        return seen < directives.fail_times

    def plan(self, request: ChatRequest) -> Plan:
        s = self._settings
        d = parse_directives(request.last_user_text)
        faults = self._faults_apply(request, d)
        retry_after = d.retry_after if d.retry_after is not None else s.retry_after
        if faults and d.fail is not None:
            return Plan(error_status=d.fail, retry_after_s=retry_after)
        if s.rate_limit_rate or s.error_rate:
            draw = self._rng.random()
            if draw < s.rate_limit_rate:
                return Plan(error_status=429, retry_after_s=retry_after)
            if draw < s.rate_limit_rate + s.error_rate:
                return Plan(error_status=500)

        seed = content_seed(request, s.seed)
        if d.vary:
            self._calls += 1
            seed ^= self._calls * 0x9E3779B97F4A7C15  # a per-call nonce spreads over the seed
        texts = None
        calls = toolcalls.wanted_calls(request.tools, request.tool_choice, d.tool_calls)
        tool_calls: tuple[ToolCallPlan, ...] = ()
        if calls:
            try:
                tool_calls = toolcalls.plan_tool_calls(
                    request.tools, request.tool_choice, calls, random.Random(seed), WORDS
                )
            except toolcalls.InvalidTools as exc:
                raise InvalidRequest(str(exc), exc.param) from None
        if tool_calls and d.tokens is None:
            wanted = 0  # a model that calls a tool usually says nothing besides
        elif request.json_schema is not None:
            doc = jsongen.document(request.json_schema, random.Random(seed), WORDS)
            texts = jsongen.tokens(doc)
            wanted = len(texts)  # the whole document, unless max_tokens cuts it
        else:
            wanted = d.tokens if d.tokens is not None else s.completion_tokens
        cap = request.max_tokens if request.max_tokens is not None else DEFAULT_MAX_TOKENS
        count = min(wanted, cap)
        tps = d.tps if d.tps is not None else s.tokens_per_second
        cut_after = d.cut_after if faults else None
        hang_after = d.hang_after if faults else None
        if (
            request.stream
            and cut_after is None
            and hang_after is None
            and s.drop_rate
            and self._rng.random() < s.drop_rate
        ):
            cut_after = self._rng.randint(1, count - 1) if count > 1 else 0
        prompt = prompt_tokens(request)
        return Plan(
            tokens=() if texts is not None else self._vocabulary.generate(seed, count),
            texts=texts[:count] if texts is not None else None,
            finish_reason="tool_calls" if tool_calls else "length" if cap < wanted else "stop",
            prompt_tokens=prompt,
            cached_tokens=None if d.cached is None else min(d.cached, prompt),
            reasoning_tokens=None if d.reasoning is None else min(d.reasoning, count),
            ttft_s=(d.ttft_ms if d.ttft_ms is not None else s.ttft_ms) / 1000,
            interval_s=1 / tps if tps > 0 else 0.0,
            cut_after=cut_after,
            hang_after=hang_after,
            tool_calls=tool_calls,
        )
