"""The gateway scenario's whole-stack figure: the box's CPU per submission, by process."""

from __future__ import annotations

import pytest

from tests.bench.gateway import _stack_figures


def test_the_whole_stack_figure_sums_every_process_and_names_the_costliest_first() -> None:
    (figure,) = _stack_figures({"gateway": 1.0, "kafka": 2.0, "results": 0.5}, 1000, 2.0)
    assert figure.value == pytest.approx(3500.0)  # 3.5 CPU-seconds over 1,000 submissions
    assert "1.75 cores busy" in figure.note
    assert figure.note.endswith("us per submission: kafka 2000, gateway 1000, results 500")


@pytest.mark.parametrize(
    ("spent", "done", "elapsed"), [({}, 10, 1.0), ({"kafka": 1.0}, 0, 1.0), ({"k": 1.0}, 5, 0.0)]
)
def test_no_whole_stack_figure_without_processes_submissions_or_time(
    spent: dict[str, float], done: int, elapsed: float
) -> None:
    assert _stack_figures(spent, done, elapsed) == []
