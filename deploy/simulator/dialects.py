"""Dialects: how real OpenAI-compatible servers' streams differ from OpenAI's own.

One simulator plays every server the streamer must read. A request picks its dialect by
the URL path (`/dialects/<name>/v1/chat/completions`), else `SIM_DIALECT` applies.

What each one changes, and the server it imitates, is said beside its entry in
`DIALECTS` (the README has the same table).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from deploy.simulator.wire import DONE, ChunkEncoder

# Azure's first chunk: the prompt's content-filter verdict, before any choice.
AZURE_PROMPT_FILTER = (
    b'data: {"choices":[],"created":0,"id":"","model":"","object":"",'
    b'"prompt_filter_results":[{"prompt_index":0,"content_filter_results":'
    b'{"hate":{"filtered":false,"severity":"safe"}}}]}\n\n'
)
EMPTY_CHOICES_EVERY = 3  # tokens between two `choices: []` chunks


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    usage: bool = True  # sends the usage chunk when asked
    role_only_first: bool = False
    empty_choices: bool = False
    done: bool = True  # ends the body with `data: [DONE]`
    extra: Mapping[str, object] = field(default_factory=dict)

    @property
    def plain(self) -> bool:
        """Nothing differs from OpenAI: the simulator's fast encoder serves it."""
        return self.name == "openai"

    def encoder(
        self, *, completion_id: str, created: int, model: str, include_usage: bool
    ) -> ChunkEncoder:
        if self.plain:
            return ChunkEncoder(
                completion_id=completion_id,
                created=created,
                model=model,
                include_usage=include_usage,
            )
        return DialectEncoder(
            self,
            completion_id=completion_id,
            created=created,
            model=model,
            include_usage=include_usage,
        )


DIALECTS: dict[str, Dialect] = {
    d.name: d
    for d in (
        # OpenAI: a role chunk with empty content, content deltas, the finish chunk, the
        # usage chunk when `stream_options.include_usage` asks, `[DONE]`.
        Dialect("openai"),
        # Servers that ignore `stream_options` (older vLLM and Ollama releases, many
        # proxies): no usage chunk even when asked; the client must count.
        Dialect("no_usage", usage=False),
        # vLLM and OpenAI: a first chunk carrying only the role (`{"role": "assistant"}`,
        # no content key), written on its own before the first token is due.
        Dialect("role_first", role_only_first=True),
        # Azure OpenAI: a first chunk with `choices: []`, an empty id and model and the
        # prompt's `prompt_filter_results`; content-filter chunks with `choices: []`
        # between the tokens.
        Dialect("empty_choices", empty_choices=True),
        # Some Ollama versions: the body ends after the finish (and usage) chunk without
        # `data: [DONE]`.
        Dialect("no_done", done=False),
        # Fields real servers add beside OpenAI's own (`system_fingerprint`,
        # `logprobs: null`): `service_tier` and `obfuscation` (OpenAI), `x_groq` (Groq),
        # `provider` (OpenRouter). A reader must ignore what it does not know.
        Dialect(
            "vendor_fields",
            extra={
                "service_tier": "default",
                "obfuscation": "Qm8xZ",
                "x_groq": {"id": "req_01sim"},
                "provider": "streamjobs-sim",
            },
        ),
    )
}


class DialectEncoder(ChunkEncoder):
    """The chunks of a stream in one dialect: OpenAI's, with that server's differences."""

    __slots__ = ("_dialect", "_sent")

    def __init__(
        self, dialect: Dialect, *, completion_id: str, created: int, model: str, include_usage: bool
    ) -> None:
        super().__init__(
            completion_id=completion_id,
            created=created,
            model=model,
            include_usage=include_usage,
            extra=dialect.extra,
        )
        self._dialect = dialect
        self._sent = 0

    def role(self) -> bytes:
        first = AZURE_PROMPT_FILTER if self._dialect.empty_choices else b""
        if self._dialect.role_only_first:
            return (
                first
                + self._head
                + b'[{"index":0,"delta":{"role":"assistant"},"logprobs":null,"finish_reason":null}]'
                + self._tail
            )
        return first + super().role()

    def tokens(self, encoded: Sequence[bytes]) -> bytes:
        if not self._dialect.empty_choices:
            return super().tokens(encoded)
        out = []
        for token in encoded:
            out.append(super().tokens((token,)))
            self._sent += 1
            if self._sent % EMPTY_CHOICES_EVERY == 0:
                out.append(self._head + b"[]" + self._tail)
        return b"".join(out)

    def usage(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int | None = None,
        reasoning_tokens: int | None = None,
    ) -> bytes:
        if not self._dialect.usage:
            return b""
        return super().usage(prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens)

    def done(self) -> bytes:
        return DONE if self._dialect.done else b""
