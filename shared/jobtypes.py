"""The job types users may submit: system prompt, and for structured types an output schema.

A structured type's `output_schema` is sent upstream as an OpenAI `response_format`
(`json_schema`), and `parse_response` reads the completion back into a checked value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SEVERITIES: tuple[str, ...] = ("critical", "high", "medium", "low", "info")


@dataclass(frozen=True, slots=True)
class JobType:
    name: str
    system_prompt: str
    description: str
    output_schema: dict[str, Any] | None = None

    @property
    def structured(self) -> bool:
        return self.output_schema is not None

    def response_format(self) -> dict[str, Any] | None:
        """The OpenAI `response_format` that asks for this type's JSON, or None."""
        if self.output_schema is None:
            return None
        return {
            "type": "json_schema",
            "json_schema": {"name": self.name, "strict": True, "schema": self.output_schema},
        }


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    # OpenAI strict mode: every property required, no others.
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


SECURITY_SCHEMA = _object(
    {
        "findings": {
            "type": "array",
            "items": _object(
                {
                    "severity": {"type": "string", "enum": list(SEVERITIES)},
                    "title": {"type": "string"},
                    "detail": {"type": "string"},
                }
            ),
        }
    }
)
GAS_SCHEMA = _object(
    {
        "optimisations": {
            "type": "array",
            "items": _object(
                {
                    "title": {"type": "string"},
                    "detail": {"type": "string"},
                    "estimated_gas_saved": {"type": "integer", "minimum": 0},
                }
            ),
        }
    }
)
SENTIMENT_SCHEMA = _object(
    {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "reason": {"type": "string"},
    }
)

_JSON_ONLY = " Answer with one JSON object only, no prose around it, of this shape: "

JOB_TYPES: dict[str, JobType] = {
    t.name: t
    for t in (
        JobType(
            "analysis",
            "You are a careful analyst. Answer clearly and concisely.",
            "General-purpose analysis of the prompt.",
        ),
        JobType(
            "security_analysis",
            "You are a smart-contract security auditor. List each finding with a severity "
            "(critical, high, medium, low, info), a title and a short explanation."
            + _JSON_ONLY
            + '{"findings": [{"severity": "high", "title": "...", "detail": "..."}]}.',
            "Security review; findings carry a severity.",
            SECURITY_SCHEMA,
        ),
        JobType(
            "gas_analysis",
            "You are an EVM gas optimisation expert. List concrete optimisations with the "
            "estimated gas saved."
            + _JSON_ONLY
            + '{"optimisations": [{"title": "...", "detail": "...", '
            '"estimated_gas_saved": 2100}]}.',
            "Gas cost review of a smart contract.",
            GAS_SCHEMA,
        ),
        JobType(
            "sentiment_analysis",
            "Classify the sentiment of the text as positive, negative or neutral, with a "
            "confidence between 0 and 1 and a one-sentence reason."
            + _JSON_ONLY
            + '{"label": "positive", "confidence": 0.9, "reason": "..."}.',
            "Sentiment of a text.",
            SENTIMENT_SCHEMA,
        ),
    )
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Finding(_Strict):
    severity: Literal["critical", "high", "medium", "low", "info"]
    title: str
    detail: str


class SecurityReport(_Strict):
    findings: list[Finding]


class GasOptimisation(_Strict):
    title: str
    detail: str
    estimated_gas_saved: int = Field(ge=0)


class GasReport(_Strict):
    optimisations: list[GasOptimisation]


class Sentiment(_Strict):
    label: Literal["positive", "negative", "neutral"]
    confidence: float = Field(ge=0, le=1)
    reason: str


_MODELS: dict[str, type[_Strict]] = {
    "security_analysis": SecurityReport,
    "gas_analysis": GasReport,
    "sentiment_analysis": Sentiment,
}


@dataclass(frozen=True, slots=True)
class ParsedResponse:
    """A response read by its type's schema: `value` None when unstructured or invalid."""

    value: Any = None
    error: str | None = None
    severity_breakdown: dict[str, int] | None = None


def _strip_fence(text: str) -> str:
    # Models often wrap JSON in a Markdown code fence despite being asked not to.
    body = text.strip()
    if body.startswith("```"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
        body = body.removesuffix("```").rstrip().removesuffix("```")
    return body


def parse_response(job_type: str, text: str | None) -> ParsedResponse:
    """Parse a completion by its job type's schema; never raises."""
    model = _MODELS.get(job_type)
    if model is None or text is None:
        return ParsedResponse()
    try:
        raw = json.loads(_strip_fence(text))
    except ValueError as exc:
        return ParsedResponse(error=f"not JSON: {exc}")
    try:
        value = model.model_validate(raw)
    except ValidationError as exc:
        return ParsedResponse(error=f"not a {job_type} document: {exc.error_count()} errors")
    breakdown = None
    if isinstance(value, SecurityReport):
        breakdown = dict.fromkeys(SEVERITIES, 0)
        for finding in value.findings:
            breakdown[finding.severity] += 1
    return ParsedResponse(value=value.model_dump(mode="json"), severity_breakdown=breakdown)
