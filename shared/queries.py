"""The query parameters of the read API as pydantic models: one object validates a query
(the results service) and documents it (the gateway's OpenAPI document).

A query string is untrusted text: each rule answers a `BadQuery` naming the parameter, and
strings are cleaned (shared.text) as the stored ones were, so a NUL in a filter matches
what was stored instead of breaking the query.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo
from pydantic import field_validator as validates
from pydantic_core import PydanticCustomError

from shared.lifecycle import JobStatus
from shared.text import clean_text
from shared.topics import Priority

# Moments PostgreSQL and datetime arithmetic (a day either side) both handle.
EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
LATEST = datetime(9999, 12, 30, tzinfo=UTC)
MAX_LIMIT = 200
GROUP_KEYS = ("model", "job_type", "priority", "user_id", "bucket")
BUCKETS = ("minute", "hour", "day")

Q = TypeVar("Q", bound=BaseModel)


class BadQuery(Exception):
    """A query parameter that cannot be read: its name and the rule it broke."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(detail)
        self.name = name
        self.detail = detail


def _bad(detail: str) -> PydanticCustomError:
    return PydanticCustomError("bad_parameter", detail)


def _text(raw: Any) -> str | None:
    return clean_text(raw) if raw else None


def _moment(raw: Any, name: str) -> datetime | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, datetime):
        return raw
    try:
        moment = datetime.fromisoformat(str(raw).replace(" ", "+"))  # a '+' arrives as a space
        moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
        in_range = EARLIEST <= moment <= LATEST
    except (ValueError, OverflowError):
        raise _bad(f"{name} must be an ISO 8601 date-time") from None
    if not in_range:
        raise _bad(f"{name} must lie between years 1 and 9999")
    return moment


def _since_before(raw: Any, info: ValidationInfo, default: timedelta) -> datetime | None:
    """A window's start: given, or `default` before its end, and always before its end."""
    until = info.data.get("until")
    if until is None:
        return None  # `until` did not validate: that is the error to answer
    since = _moment(raw, "since") or until - default
    if since >= until:
        raise _bad("since must be before until")
    return since


def _choice(raw: Any, name: str, allowed: tuple[str, ...]) -> str | None:
    if raw is None or raw == "":
        return None
    if raw not in allowed:
        raise _bad(f"{name} must be one of {', '.join(allowed)}")
    return str(raw)


def _as_text(schema: dict[str, Any]) -> None:
    """Documented as the query string carries it: one comma-separated text."""
    schema.pop("items", None)
    schema["type"] = "string"


class _Query(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class JobListQuery(_Query):
    """`GET /api/v1/jobs`: the caller's jobs, newest first, filtered."""

    status: JobStatus | None = Field(default=None, description="only jobs in this status")
    job_type: str | None = Field(default=None, description="only jobs of this type")
    priority: Priority | None = Field(default=None, description="only jobs of this band")
    since: datetime | None = Field(default=None, description="submitted at or after")
    until: datetime | None = Field(default=None, description="submitted before")
    user_id: str | None = Field(default=None, description="admin only: one user's jobs")
    limit: int = Field(default=50, ge=1, le=MAX_LIMIT, description="page size")
    cursor: str | None = Field(default=None, description="`next_cursor` of the previous page")

    @validates("status", mode="before")
    @classmethod
    def _status(cls, raw: Any) -> str | None:
        return _choice(raw, "status", tuple(s.value for s in JobStatus))

    @validates("priority", mode="before")
    @classmethod
    def _priority(cls, raw: Any) -> str | None:
        return _choice(raw, "priority", tuple(p.value for p in Priority))

    @validates("job_type", "user_id", mode="before")
    @classmethod
    def _clean(cls, raw: Any) -> str | None:
        return _text(raw)

    @validates("since", "until", mode="before")
    @classmethod
    def _moments(cls, raw: Any, info: ValidationInfo) -> datetime | None:
        return _moment(raw, str(info.field_name))

    @validates("limit", mode="before")
    @classmethod
    def _limit(cls, raw: Any) -> int:
        if isinstance(raw, int):
            return raw
        rule = f"limit must be an integer from 1 to {MAX_LIMIT}"
        if len(raw) > 12:
            raise _bad(rule)  # before int(): a huge number is costly to read
        try:
            limit = int(raw)
        except ValueError:
            raise _bad(rule) from None
        if not 1 <= limit <= MAX_LIMIT:
            raise _bad(rule)
        return limit

    @validates("cursor", mode="before")
    @classmethod
    def _cursor(cls, raw: Any) -> str | None:
        return raw or None


class AnalyticsQuery(_Query):
    """`GET /api/v1/analytics`: the window and the grouping of the figures."""

    # Read in this order: `since` defaults to a day before `until`, and must precede it.
    until: datetime = Field(default=None, description="to (default: now)", validate_default=True)
    since: datetime = Field(
        default=None, description="from (default: a day ago)", validate_default=True
    )
    group_by: tuple[str, ...] = Field(
        default=(),
        description="comma-separated: " + ", ".join(GROUP_KEYS),
        json_schema_extra=_as_text,
    )
    bucket: Literal["minute", "hour", "day"] = Field(
        default="hour", description="time bucket when grouping by bucket"
    )

    @validates("until", mode="before")
    @classmethod
    def _until(cls, raw: Any) -> datetime:
        return _moment(raw, "until") or datetime.now(UTC)

    @validates("since", mode="before")
    @classmethod
    def _since(cls, raw: Any, info: ValidationInfo) -> datetime | None:
        return _since_before(raw, info, timedelta(days=1))

    @validates("group_by", mode="before")
    @classmethod
    def _group_by(cls, raw: Any) -> tuple[str, ...]:
        if isinstance(raw, tuple):
            return raw
        keys: list[str] = []
        for key in filter(None, str(raw).split(",")):
            key = key.strip()
            if key not in GROUP_KEYS:
                raise _bad(f"group_by keys are {', '.join(GROUP_KEYS)}")
            if key not in keys:
                keys.append(key)
        return tuple(keys)

    @validates("bucket", mode="before")
    @classmethod
    def _bucket(cls, raw: Any) -> str:
        return _choice(raw, "bucket", BUCKETS) or "hour"


# A chart of more points than this is not drawn any better, only read more slowly.
MAX_SERIES_POINTS = 1440
MAX_STEP_S = 86_400


class SeriesQuery(_Query):
    """`GET /api/v1/analytics/series`: the window and the step of the time series."""

    until: datetime = Field(default=None, description="to (default: now)", validate_default=True)
    since: datetime = Field(
        default=None, description="from (default: an hour ago)", validate_default=True
    )
    step: int = Field(
        default=60,
        ge=1,
        le=MAX_STEP_S,
        description=f"seconds per point; at most {MAX_SERIES_POINTS} points per window",
        validate_default=True,
    )

    @validates("until", mode="before")
    @classmethod
    def _until(cls, raw: Any) -> datetime:
        return _moment(raw, "until") or datetime.now(UTC)

    @validates("since", mode="before")
    @classmethod
    def _since(cls, raw: Any, info: ValidationInfo) -> datetime | None:
        return _since_before(raw, info, timedelta(hours=1))

    @validates("step", mode="before")
    @classmethod
    def _step(cls, raw: Any, info: ValidationInfo) -> int:
        rule = f"step must be an integer number of seconds from 1 to {MAX_STEP_S}"
        if isinstance(raw, int):
            step = raw
        elif len(str(raw)) > 6:
            raise _bad(rule)
        else:
            try:
                step = int(str(raw))
            except ValueError:
                raise _bad(rule) from None
        if not 1 <= step <= MAX_STEP_S:
            raise _bad(rule)
        since, until = info.data.get("since"), info.data.get("until")
        if since is not None and until is not None:
            points = (until - since).total_seconds() / step
            if points > MAX_SERIES_POINTS:
                raise _bad(f"since to until is more than {MAX_SERIES_POINTS} steps of {step} s")
        return step


def parse_query(model: type[Q], query: Mapping[str, str]) -> Q:
    """The first value of each parameter `model` knows, validated; raises `BadQuery` for the
    first parameter (in the model's order) that breaks its rule."""
    values = {name: query[name] for name in model.model_fields if name in query}
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        raise BadQuery(name, first["msg"]) from None
