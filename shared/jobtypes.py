"""The job types users may submit, each with its system prompt."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class JobType:
    name: str
    system_prompt: str
    description: str


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
            "(critical, high, medium, low, info), a title and a short explanation.",
            "Security review; findings carry a severity.",
        ),
        JobType(
            "gas_analysis",
            "You are an EVM gas optimisation expert. List concrete optimisations with the "
            "estimated gas saved.",
            "Gas cost review of a smart contract.",
        ),
        JobType(
            "sentiment_analysis",
            "Classify the sentiment of the text as positive, negative or neutral, with a "
            "confidence between 0 and 1 and a one-sentence reason.",
            "Sentiment of a text.",
        ),
    )
}
