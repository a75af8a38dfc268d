"""Submissions the gateway accepts are readable and storable by every consumer downstream."""

from __future__ import annotations

import json
import re
from typing import Any

import annotated_types
from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway.admission import build_records
from services.gateway.admission_records import encode_record
from services.gateway.rejection import Rejection
from services.gateway.settings import GatewaySettings
from services.gateway.submit import parse_submission
from services.gateway.view import idempotent_job_id
from shared.api import JobSubmission
from shared.contracts import JobAccepted, RunJob, parse_record, utcnow
from shared.jobtypes import load_job_types

DEPTH = 32
TYPES = load_job_types()
# A \u0000 escape that is not itself escaped: an odd number of backslashes before the u.
NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000", re.IGNORECASE)


def nested(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = [value]
    return value


def refusal(body: dict[str, Any] | bytes) -> Rejection:
    raw = body if isinstance(body, bytes) else json.dumps(body, allow_nan=True).encode()
    parsed = parse_submission(raw, max_prompt_chars=10_000, max_depth=DEPTH, job_types=TYPES)
    assert isinstance(parsed, Rejection), body
    return parsed


def downstream_reads(submission: JobSubmission) -> None:
    """What the consumers do with an accepted job: parse its envelope, encode it as JSON text."""
    job_id = idempotent_job_id("u", "k")
    accepted, run = build_records(
        submission, user_id="u", job_id=job_id, trace_id="0" * 31 + "1", submitted_at=utcnow()
    )
    for record in (accepted, run):
        wire = encode_record(record)
        parsed = parse_record(wire)
        assert isinstance(parsed, JobAccepted | RunJob)
        assert parsed.data.metadata == submission.metadata
        # As the results store encodes jsonb: strict JSON with no NUL escape (jsonb refuses
        # one); the text backslash-u-0000 may be there, escaped like any other text.
        text = json.dumps(parsed.data.metadata, allow_nan=False)
        assert not NUL_ESCAPE.search(text)
        text.encode("utf-8")


def test_the_deepest_body_allowed_still_parses_inside_its_envelope() -> None:
    # metadata is level 2; its innermost list is level DEPTH.
    raw = json.dumps({"prompt": "x", "metadata": {"n": nested(DEPTH - 2)}}).encode()
    parsed = parse_submission(raw, max_prompt_chars=100, max_depth=DEPTH, job_types=TYPES)
    assert isinstance(parsed, JobSubmission)
    downstream_reads(parsed)
    too_deep = refusal({"prompt": "x", "metadata": {"n": nested(DEPTH - 1)}})
    assert too_deep.status == 422
    assert too_deep.errors[0]["type"] == "json_too_deep"


def test_the_largest_depth_setting_still_leaves_room_for_the_envelope_downstream() -> None:
    field = GatewaySettings.model_fields["gateway_max_json_depth"]
    most = next(m.le for m in field.metadata if isinstance(m, annotated_types.Le))
    raw = json.dumps({"prompt": "x", "metadata": {"n": nested(most - 2)}}).encode()
    parsed = parse_submission(raw, max_prompt_chars=100, max_depth=most, job_types=TYPES)
    assert isinstance(parsed, JobSubmission)
    downstream_reads(parsed)  # pydantic in every consumer, json for jsonb


def test_nul_is_refused_in_every_string_including_keys_after_json_decoding() -> None:
    for body, where in (
        ({"prompt": "a\x00b"}, ["body", "prompt"]),
        ({"prompt": "x", "metadata": {"k\x00": 1}}, ["body", "metadata", "k\x00"]),
        ({"prompt": "x", "metadata": {"a": [1, {"b": "\x00"}]}}, ["body", "metadata", "a", 1, "b"]),
        ({"prompt": "x", "config": {"model": "m\x00"}}, ["body", "config", "model"]),
    ):
        rejection = refusal(body)
        assert rejection.status == 422
        assert rejection.errors[0]["type"] == "nul_character"
        assert rejection.errors[0]["loc"] == where
    # The JSON escape decodes to the same NUL; the text \u0000 (a backslash) is only text.
    assert (
        refusal(rb'{"prompt":"x","metadata":{"t":"\u0000"}}').errors[0]["type"] == "nul_character"
    )
    text = parse_submission(
        rb'{"prompt":"x","metadata":{"t":"\\u0000"}}',
        max_prompt_chars=100,
        max_depth=DEPTH,
        job_types=TYPES,
    )
    assert isinstance(text, JobSubmission) and text.metadata == {"t": "\\u0000"}
    downstream_reads(text)


def test_lone_surrogates_and_unstorable_numbers_are_refused() -> None:
    assert refusal(rb'{"prompt":"x","metadata":{"s":"\ud83d"}}').status in (400, 422)
    assert refusal({"prompt": "x", "metadata": {"\ud83d": 1}}).status in (400, 422)
    for value, kind in (
        (float("nan"), "number_not_finite"),
        (float("inf"), "number_not_finite"),
        (2**63, "number_out_of_range"),
        (-(2**63) - 1, "number_out_of_range"),
    ):
        rejection = refusal({"prompt": "x", "metadata": {"n": [value]}})
        assert (rejection.status, rejection.errors[0]["type"]) == (422, kind)
    assert refusal({"prompt": "x", "config": {"seed": 2**64}}).status == 422
    # A valid surrogate pair is one character, and the int64 edges are fine.
    ok = parse_submission(
        json.dumps({"prompt": "😀", "metadata": {"n": [2**63 - 1, -(2**63)]}}).encode(),
        max_prompt_chars=10,
        job_types=TYPES,
    )
    assert isinstance(ok, JobSubmission)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(), max_size=8)  # surrogates and NUL included
    | st.sampled_from(["\\u0000", "a\x00", "\ud800"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(st.characters(), max_size=4), inner, max_size=3)
    ),
    max_leaves=20,
)


@settings(max_examples=80, deadline=None)
@given(metadata=st.dictionaries(st.text(max_size=4), json_values, max_size=3))
def test_whatever_is_accepted_survives_every_consumer(metadata: dict[str, Any]) -> None:
    raw = json.dumps({"prompt": "x", "metadata": metadata}, allow_nan=True).encode()
    parsed = parse_submission(raw, max_prompt_chars=100, max_depth=4, job_types=TYPES)
    if isinstance(parsed, JobSubmission):
        downstream_reads(parsed)
    else:
        assert parsed.status in (400, 422)
