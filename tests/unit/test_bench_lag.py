"""The bench's pure computations: percentiles, histogram quantiles, what a user sees."""

from __future__ import annotations

import math

import pytest

from tests.bench.figures import Figure, percentile
from tests.bench.lag import (
    DirectStream,
    UserStream,
    added_first_token,
    first_token_parts,
    token_lags,
    token_times,
)
from tests.bench.promtext import Scrape, delta, histogram_quantile

METRICS = """\
# HELP streamjobs_streamer_loop_lag_seconds Event loop lag
# TYPE streamjobs_streamer_loop_lag_seconds histogram
streamjobs_streamer_loop_lag_seconds_bucket{le="0.01"} 90.0
streamjobs_streamer_loop_lag_seconds_bucket{le="0.05"} 99.0
streamjobs_streamer_loop_lag_seconds_bucket{le="0.1"} 100.0
streamjobs_streamer_loop_lag_seconds_bucket{le="+Inf"} 100.0
streamjobs_streamer_loop_lag_seconds_count 100.0
streamjobs_streamer_loop_lag_seconds_sum 0.9
# HELP streamjobs_streamer_tokens_streamed_total Tokens read from the upstream
# TYPE streamjobs_streamer_tokens_streamed_total counter
streamjobs_streamer_tokens_streamed_total 1234.0
"""


def test_percentile_interpolates_between_ranks_and_is_nan_for_nothing() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    assert percentile([10.0, 0.0], 100) == 10.0
    assert math.isnan(percentile([], 50))


def test_a_histogram_and_a_counter_are_read_from_the_exposition_text() -> None:
    scrape = Scrape.parse(METRICS)
    assert scrape.has("streamjobs_streamer_loop_lag_seconds")
    assert not scrape.has("streamjobs_streamer_overloaded")
    assert scrape.value("streamjobs_streamer_tokens_streamed_total") == 1234.0
    assert scrape.value("streamjobs_streamer_overloaded") is None
    buckets = scrape.buckets("streamjobs_streamer_loop_lag_seconds")
    assert buckets == [(0.01, 90.0), (0.05, 99.0), (0.1, 100.0), (math.inf, 100.0)]


def test_histogram_quantile_interpolates_inside_the_bucket_holding_the_rank() -> None:
    buckets = [(0.01, 90.0), (0.05, 99.0), (0.1, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.05)
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.01 * 50 / 90)
    assert histogram_quantile(0.995, buckets) == pytest.approx(0.075)


def test_a_rank_in_the_inf_bucket_answers_the_largest_finite_bound() -> None:
    assert histogram_quantile(0.99, [(0.05, 10.0), (0.1, 20.0), (math.inf, 100.0)]) == 0.1


def test_quantiles_between_two_scrapes_count_only_the_observations_between_them() -> None:
    before = [(0.05, 1000.0), (math.inf, 1000.0)]
    after = [(0.05, 1000.0), (math.inf, 1100.0)]
    assert delta(before, after) == [(0.05, 0.0), (math.inf, 100.0)]
    assert histogram_quantile(0.5, delta(before, after)) == 0.05
    assert math.isnan(histogram_quantile(0.99, delta(after, after)))


def test_a_chunk_counts_its_receipt_for_every_token_it_carries() -> None:
    assert token_times([(10.0, 1), (10.5, 3), (11.0, 0), (11.2, 2)]) == [
        10.0,
        10.5,
        10.5,
        10.5,
        11.2,
        11.2,
    ]


def test_added_first_token_is_the_users_wait_beyond_reading_the_upstream_directly() -> None:
    direct = DirectStream(requested=100.0, tokens=[100.05, 100.06])
    user = UserStream(submitted=200.0, first_emitted=200.07, chunks=[(200.08, 1)])
    assert added_first_token(user, direct) == pytest.approx(0.03)
    assert added_first_token(UserStream(submitted=200.0), direct) is None


def test_the_added_first_token_splits_into_four_parts_that_sum_to_it() -> None:
    direct = DirectStream(requested=100.0, tokens=[100.05])
    # 202 after 10 ms, the slot 5 ms later, the first chunk 60 ms after the slot (the
    # upstream's own 50 ms among them), at the client 3 ms after that.
    user = UserStream(
        submitted=200.0, accepted=200.01, started=200.015, first_emitted=200.075,
        chunks=[(200.078, 1)],
    )  # fmt: skip
    parts = first_token_parts(user, direct)
    assert parts == pytest.approx((0.01, 0.005, 0.01, 0.003))
    assert sum(parts or ()) == pytest.approx(added_first_token(user, direct) or math.nan)
    # Without the job.started event the split is not known.
    user.started = None
    assert first_token_parts(user, direct) is None


def test_token_lag_is_receipt_behind_the_upstream_spacing_from_the_first_token() -> None:
    # The upstream gives one token every 10 ms; the streamer had token 0 at 10.0 and
    # flushed it, coalesced tokens 1-3 into one chunk, received 5 ms after token 3 was due.
    direct = DirectStream(requested=0.0, tokens=[0.05, 0.06, 0.07, 0.08])
    user = UserStream(submitted=9.0, first_emitted=10.0, chunks=[(10.002, 1), (10.035, 3)])
    lags = token_lags(user, direct)
    assert lags == pytest.approx([0.002, 0.025, 0.015, 0.005])


def test_token_lag_needs_the_first_chunk_and_stops_at_the_shorter_stream() -> None:
    direct = DirectStream(requested=0.0, tokens=[0.05])
    assert token_lags(UserStream(submitted=0.0, chunks=[(1.0, 2)]), direct) == []
    user = UserStream(submitted=0.0, first_emitted=1.0, chunks=[(1.01, 2)])
    assert token_lags(user, direct) == pytest.approx([0.01])


def test_a_target_is_met_by_its_bound_and_never_by_a_figure_not_available() -> None:
    assert Figure("x", 10.0, "ms", "<= 10").met() is True
    assert Figure("x", 4999.0, "jobs/s", ">= 5000").met() is False
    assert Figure("x", 1.0, "ms", "report").met() is None
    assert Figure("x", math.nan, "ms", "<= 10").met() is None
