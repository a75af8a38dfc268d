"""The series grid, the filling of empty steps, and the series query's rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.results.series import dense, grid, queue_depth
from shared.queries import MAX_SERIES_POINTS, BadQuery, SeriesQuery, parse_query

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def test_the_grid_is_aligned_to_the_step_so_refreshes_draw_the_same_points() -> None:
    a = grid(T0 + timedelta(seconds=7), T0 + timedelta(seconds=127), 60)
    b = grid(T0 + timedelta(seconds=41), T0 + timedelta(seconds=161), 60)
    assert a.starts[0] == b.starts[0] == int(T0.timestamp())
    assert all(s % 60 == 0 for s in a.starts)


def test_the_grid_covers_the_whole_window_up_to_until() -> None:
    g = grid(T0, T0 + timedelta(seconds=601), 60)
    assert g.points == 11  # the last, partial step counts
    assert g.begin == T0
    assert g.end >= T0 + timedelta(seconds=601)
    assert g.end - timedelta(seconds=60) < T0 + timedelta(seconds=601)


def test_a_window_shorter_than_a_step_still_has_one_point() -> None:
    g = grid(T0 + timedelta(seconds=1), T0 + timedelta(seconds=2), 3600)
    assert g.points == 1


def test_steps_without_rows_are_filled_and_rows_out_of_the_grid_dropped() -> None:
    assert dense([(1, 2.5), (3, 1.0), (7, 9.0), (-1, 9.0)], 4, 0.0) == [0.0, 2.5, 0.0, 1.0]
    assert dense([(0, 12.0)], 3, None) == [12.0, None, None]


def test_the_series_query_defaults_to_the_last_hour_by_minute() -> None:
    q = parse_query(SeriesQuery, {})
    assert q.step == 60
    assert q.until - q.since == timedelta(hours=1)


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ({"step": "0"}, "step"),
        ({"step": "abc"}, "step"),
        ({"step": "99999999999"}, "step"),
        ({"step": "1", "since": "2026-01-01T00:00:00Z", "until": "2026-01-02T00:00:00Z"}, "step"),
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "since"),
        ({"since": "yesterday"}, "since"),
    ],
)
def test_a_bad_series_query_names_its_parameter(query: dict[str, str], name: str) -> None:
    with pytest.raises(BadQuery) as caught:
        parse_query(SeriesQuery, query)
    assert caught.value.name == name


def test_the_most_points_allowed_are_accepted() -> None:
    until = T0.isoformat()
    since = (T0 - timedelta(seconds=MAX_SERIES_POINTS * 5)).isoformat()
    q = parse_query(SeriesQuery, {"since": since, "until": until, "step": "5"})
    assert (q.until - q.since).total_seconds() / q.step == MAX_SERIES_POINTS


def test_queue_depth_starts_from_those_waiting_and_cumulates_arrivals_less_departures() -> None:
    moves = [
        (0, "normal", 3),
        (0, "normal", -1),
        (1, "normal", -2),
        (2, "high", 1),
        (3, "high", -1),
    ]
    depth = queue_depth({"normal": 2, "low": 1}, moves, 4)
    assert depth == {
        "urgent": [0, 0, 0, 0],
        "high": [0, 0, 1, 0],
        "normal": [4, 2, 2, 2],
        "low": [1, 1, 1, 1],
    }


def test_queue_depth_ignores_unknown_bands_and_steps_and_never_goes_negative() -> None:
    depth = queue_depth({}, [(0, "normal", -1), (9, "normal", 5), (0, "weird", 4)], 2)
    assert depth["normal"] == [0, 0]
    assert "weird" not in depth
