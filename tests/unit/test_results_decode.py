"""services.results.decode: the fast chunk reader accepts only what the contract parser
accepts, and reads it to the same row; everything else is the contract parser's to judge."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.results.decode import (
    ChunkRow,
    StoredEvent,
    UnexpectedType,
    fast_chunk_row,
    read_record,
)
from shared.contracts import (
    CancelJob,
    CancelJobData,
    JobStarted,
    JobStartedData,
    TokenChunk,
    TokenChunkData,
)

T0 = datetime(2026, 11, 1, 12, 0, 0, 250_000, tzinfo=UTC)
BOUNDED = settings(max_examples=300, deadline=None)


def _chunk(**data: Any) -> TokenChunk:
    values: dict[str, Any] = {
        "attempt": 1,
        "seq": 3,
        "text": " token",
        "tokens": 1,
        "first_token_at": T0,
        "emitted_at": T0 + timedelta(milliseconds=5),
        **data,
    }
    return TokenChunk(job_id="job-1", data=TokenChunkData(**values))


def _by_contract(value: bytes) -> ChunkRow | type[Exception]:
    """What the contract path alone makes of `value`: its row, or the error it raises."""
    try:
        row = read_record(value, chunk_expected=False)
    except (ValidationError, UnexpectedType) as exc:
        return type(exc)
    assert isinstance(row, ChunkRow)  # every example here is typed job.chunk
    return row


def _same_row(fast: ChunkRow, slow: ChunkRow) -> bool:
    """Equal, but for sub-microsecond digits: rounded by msgspec, cut by the contract."""
    close = timedelta(microseconds=1)
    return (
        fast[:5] == slow[:5]
        and abs(fast.first_token_at - slow.first_token_at) <= close
        and abs(fast.emitted_at - slow.emitted_at) <= close
    )


def test_a_chunk_as_the_streamer_writes_it_takes_the_fast_path() -> None:
    chunk = _chunk(text="héllo ✓ 𝄞")
    row = fast_chunk_row(chunk.to_bytes())
    assert row == ChunkRow("job-1", 1, 3, "héllo ✓ 𝄞", 1, T0, T0 + timedelta(milliseconds=5))
    assert read_record(chunk.to_bytes(), chunk_expected=True) == row


@pytest.mark.parametrize(
    "edit",
    [
        {"future_field": 1},  # a newer producer's optional field
        {"data": {"seq": 1.0}},  # lax types the contract accepts
        {"data": {"first_token_at": "2026-11-01T12:00"}},  # no seconds
        {"event_id": "{12345678-1234-5678-1234-567812345678}"},
        {"data": {"text": "a\u0000b"}},  # travels as the \\u0000 escape
    ],
)
def test_what_the_fast_path_declines_the_contract_reads(edit: dict[str, Any]) -> None:
    record = json.loads(_chunk().to_bytes())
    record.update({k: v for k, v in edit.items() if k != "data"})
    record["data"].update(edit.get("data", {}))
    value = json.dumps(record).encode()
    assert fast_chunk_row(value) is None
    row = read_record(value, chunk_expected=True)
    assert isinstance(row, ChunkRow)
    assert row.first_token_at.tzinfo is not None
    assert "\x00" not in row.text  # cleaned for PostgreSQL


def test_a_lifecycle_event_keeps_its_own_text_as_payload_unless_jsonb_refuses_it() -> None:
    started = JobStarted(job_id="j", data=JobStartedData(attempt=1, worker="w"))
    stored = read_record(started.to_bytes(), chunk_expected=False)
    assert stored == StoredEvent(started, started.to_bytes().decode())
    nan = json.loads(started.to_bytes())
    nan["data"]["queued_for_ms"] = float("nan")
    stored = read_record(json.dumps(nan).encode(), chunk_expected=False)
    assert isinstance(stored, StoredEvent)
    assert stored.raw is None  # dumped from the model instead, where NaN is refused


def test_a_record_of_another_type_is_refused_by_type() -> None:
    cancel = CancelJob(job_id="j", data=CancelJobData(user_id="u"))
    with pytest.raises(UnexpectedType, match=r"job\.cancel"):
        read_record(cancel.to_bytes(), chunk_expected=True)


# ---- the property: any field replaced by any JSON, the two readers agree ----

TIMESTAMPS = st.one_of(
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
    st.datetimes(timezones=st.none()).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.strftime("%Y-%m-%d %H:%M:%S.%fZ")),
    st.sampled_from(
        [
            "2026-11-01t12:00:00z",
            "2026-11-01T12:00:00.1234567Z",
            "2026-11-01T23:59:60Z",
            "2026-11-01T24:00:00Z",
            "2026-02-30T12:00:00Z",
            "0000-11-01T12:00:00Z",
            "2026-11-01T12:00Z",
            "2026-11-01",
            "2026-11-01T12:00:00+05:30",
            "2026-11-01T12:00:00+24:00",
            "2026-11-01T12:00:00+05:30:10",
            "20261101T120000Z",
        ]
    ),
)
UUIDS = st.uuids().flatmap(
    lambda u: st.sampled_from(
        [str(u), u.hex, str(u).upper(), f"urn:uuid:{u}", f"{{{u}}}", str(u)[:-1]]
    )
)
TEXT = st.text(
    st.characters(codec=None, exclude_categories=()) | st.sampled_from("\x00\ud800\udfff"),
    max_size=20,
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([-1, 0, 2**31, 2**63, 2**64, -(2**63) - 1]),
    st.floats(),
    TEXT,
    st.integers().map(str),
    TIMESTAMPS,
    UUIDS,
)
VALUES: st.SearchStrategy[Any] = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=2),
    max_leaves=6,
)
# Text no JSON library writes for a value: deep nesting, numbers past every limit.
FRAGMENTS = st.sampled_from(
    ["[" * 300 + "]" * 300, "[" * 3000 + "]" * 3000, "1" + "0" * 5000, "1e999", "NaN", "-0"]
)
FIELDS = [
    ("type",),
    ("schema_version",),
    ("event_id",),
    ("job_id",),
    ("occurred_at",),
    ("trace_id",),
    ("data",),
    ("unknown",),
    ("data", "attempt"),
    ("data", "seq"),
    ("data", "text"),
    ("data", "tokens"),
    ("data", "first_token_at"),
    ("data", "emitted_at"),
    ("data", "unknown"),
]


@st.composite
def mangled_chunks(draw: st.DrawFn) -> bytes:
    record: dict[str, Any] = json.loads(_chunk(seq=draw(st.integers(0, 9))).to_bytes())
    fragments: dict[str, str] = {}
    for n, path in enumerate(draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3))):
        *parents, leaf = path
        target = record
        for parent in parents:
            target = target[parent] if isinstance(target.get(parent), dict) else {}
        action = draw(st.sampled_from(["value", "fragment", "delete"]))
        if action == "delete":
            target.pop(leaf, None)
        elif action == "value":
            target[leaf] = draw(VALUES)
        else:
            marker = f"@@fragment{n}@@"
            target[leaf] = marker
            fragments[json.dumps(marker)] = draw(FRAGMENTS)
    text = json.dumps(record, ensure_ascii=draw(st.booleans()))
    for marker, fragment in fragments.items():
        text = text.replace(marker, fragment, 1)
    return text.encode("utf-8", "surrogatepass")


@BOUNDED
@given(mangled_chunks())
@example(_chunk().to_bytes())
@example(b'{"type":"job.chunk","job_id":"a","job_id":"b","data":{}}')
@example(_chunk().to_bytes().replace(b"Z", b""))  # no offsets: both take UTC
def test_the_fast_chunk_reader_accepts_only_what_the_contract_reads_and_reads_it_alike(
    value: bytes,
) -> None:
    fast = fast_chunk_row(value)
    if fast is None:
        return  # declined: the contract parser decides alone, as read_record shows above
    slow = _by_contract(value)
    assert isinstance(slow, ChunkRow), f"fast path accepted what the contract refuses: {value!r}"
    assert _same_row(fast, slow), (fast, slow)


def test_an_event_id_of_any_accepted_form_is_read_by_both() -> None:
    u = uuid.uuid4()
    for form in (str(u), u.hex, str(u).upper()):
        record = json.loads(_chunk().to_bytes())
        record["event_id"] = form
        value = json.dumps(record).encode()
        fast = fast_chunk_row(value)
        assert fast is not None
        assert _by_contract(value) == fast
