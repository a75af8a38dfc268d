"""The bench's count of streams running at once, from their start and end times."""

from __future__ import annotations

from tests.bench.pipeline import peak_concurrency


def test_streams_that_all_start_before_the_first_ends_all_count() -> None:
    assert peak_concurrency([0.0, 0.1, 0.2], [1.0, 1.1, 1.2]) == 3


def test_a_stream_started_after_another_ended_takes_its_place_not_a_new_one() -> None:
    assert peak_concurrency([0.0, 0.5, 2.0], [1.0, 2.0, 3.0]) == 2


def test_no_stream_no_peak() -> None:
    assert peak_concurrency([], []) == 0
