"""The simulator's `vary` mode, which the streamer's rerun tests rely on: a real model's
answer differs on every call, so two runs spliced under one attempt would show."""

from __future__ import annotations

from deploy.simulator.script import Planner, Vocabulary, parse_chat_request
from deploy.simulator.settings import SimulatorSettings


def plan_tokens(planner: Planner, content: str) -> tuple[int, ...]:
    request = parse_chat_request(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
    )
    return planner.plan(request).tokens


def test_vary_answers_the_same_request_differently_on_every_call() -> None:
    planner = Planner(SimulatorSettings(), Vocabulary())
    answers = {plan_tokens(planner, "same [[sim tokens=20 vary=1]]") for _ in range(50)}
    assert len(answers) == 50


def test_without_vary_the_same_request_gets_the_same_answer() -> None:
    planner = Planner(SimulatorSettings(), Vocabulary())
    answers = {plan_tokens(planner, "same [[sim tokens=20]]") for _ in range(5)}
    assert len(answers) == 1
