"""The query models of the read API: each rule answers the parameter it names, in the order
the read API has always checked them, and the document lists the same parameters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.gateway.openapi import query_parameters
from shared.lifecycle import JobStatus
from shared.queries import (
    BUCKETS,
    AnalyticsQuery,
    BadQuery,
    JobListQuery,
    parse_query,
)
from shared.topics import Priority


def bad(model: type[JobListQuery] | type[AnalyticsQuery], query: dict[str, str]) -> BadQuery:
    with pytest.raises(BadQuery) as caught:
        parse_query(model, query)
    return caught.value


def test_an_empty_list_query_is_the_first_page_of_fifty_unfiltered() -> None:
    q = parse_query(JobListQuery, {})
    assert q.limit == 50 and q.status is None and q.cursor is None and q.since is None


def test_list_filters_are_read_as_the_types_the_reads_take() -> None:
    q = parse_query(
        JobListQuery,
        {
            "status": "running",
            "priority": "urgent",
            "since": "2026-01-01T00:00:00 00:00",  # a '+' arrives as a space
            "until": "2026-01-02T00:00:00",
            "job_type": "a\x00b",
            "limit": "7",
            "cursor": "",
        },
    )
    assert q.status is JobStatus.RUNNING and q.priority is Priority.URGENT
    assert q.since == datetime(2026, 1, 1, tzinfo=UTC)
    assert q.until == datetime(2026, 1, 2, tzinfo=UTC)
    assert q.job_type is not None and "\x00" not in q.job_type
    assert q.limit == 7 and q.cursor is None


@pytest.mark.parametrize(
    ("query", "name", "detail"),
    [
        ({"status": "nope"}, "status", "status must be one of"),
        ({"priority": "x"}, "priority", "priority must be one of"),
        ({"since": "yesterday"}, "since", "since must be an ISO 8601 date-time"),
        ({"until": "0001-01-01T00:00:00"}, "until", "until must lie between years 1 and 9999"),
        ({"limit": "0"}, "limit", "limit must be an integer from 1 to 200"),
        ({"limit": "9" * 13}, "limit", "limit must be an integer from 1 to 200"),
        ({"limit": ""}, "limit", "limit must be an integer from 1 to 200"),
        ({"status": "nope", "limit": "0"}, "status", "status must be one of"),
    ],
)
def test_a_list_parameter_that_breaks_its_rule_is_named_with_the_rule(
    query: dict[str, str], name: str, detail: str
) -> None:
    error = bad(JobListQuery, query)
    assert error.name == name and error.detail.startswith(detail), error.detail


def test_analytics_defaults_to_the_last_day_by_the_hour() -> None:
    q = parse_query(AnalyticsQuery, {"group_by": "model, bucket,model,"})
    assert q.until - q.since == timedelta(days=1)
    assert q.group_by == ("model", "bucket") and q.bucket == "hour"


@pytest.mark.parametrize(
    ("query", "name", "detail"),
    [
        ({"until": "x", "since": "y"}, "until", "until must be an ISO 8601 date-time"),
        ({"since": "2030-01-02", "until": "2030-01-01"}, "since", "since must be before until"),
        (
            {"since": "2030-01-02", "until": "2030-01-01", "group_by": "x"},
            "since",
            "since must be before until",
        ),
        ({"group_by": "model,color"}, "group_by", "group_by keys are"),
        ({"bucket": "week"}, "bucket", "bucket must be one of minute, hour, day"),
    ],
)
def test_an_analytics_parameter_that_breaks_its_rule_is_named_with_the_rule(
    query: dict[str, str], name: str, detail: str
) -> None:
    error = bad(AnalyticsQuery, query)
    assert error.name == name and error.detail.startswith(detail), error.detail


def test_the_documented_parameters_are_the_model_fields_with_their_bounds() -> None:
    params = {p["name"]: p for p in query_parameters(JobListQuery)}
    assert list(params) == list(JobListQuery.model_fields)
    assert params["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 200}
    assert params["status"]["schema"]["enum"] == [s.value for s in JobStatus]
    buckets = {p["name"]: p for p in query_parameters(AnalyticsQuery)}["bucket"]["schema"]
    assert buckets["enum"] == list(BUCKETS)
