"""Job types from the workload file: what loads, every refusal, breakdown paths, parsing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.jobtypes import job_type_of, job_types_of, load_job_types
from shared.workloads import WorkloadFileError


def closed(**properties: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


TICKET = closed(
    label={"type": "string", "enum": ["bug", "question"]},
    urgent={"type": "boolean"},
    meta=closed(team={"type": "string"}),
    items={"type": "array", "items": closed(kind={"type": "string", "enum": ["a", "b"]})},
    scores={"type": "array", "items": {"type": "integer"}},
)


def entry(**fields: Any) -> dict[str, Any]:
    return {"system_prompt": "Be brief.", **fields}


def test_the_packaged_file_holds_the_four_shipped_types() -> None:
    types = load_job_types()
    assert list(types) == [
        "analysis",
        "chat",
        "security_analysis",
        "gas_analysis",
        "sentiment_analysis",
    ]
    assert types["chat"].system_prompt == "" and not types["chat"].structured
    assert not types["analysis"].structured and types["analysis"].response_format() is None
    security = types["security_analysis"]
    assert security.breakdown_fields == ["findings[].severity"]
    assert security.breakdown[0].values == ("critical", "high", "medium", "low", "info")
    fmt = security.response_format()
    assert fmt is not None and fmt["json_schema"]["strict"] is True


def test_a_file_names_its_own_types(tmp_path: Path) -> None:
    path = tmp_path / "w.toml"
    path.write_text('[job_types.haiku]\nsystem_prompt = "Answer in a haiku."\n')
    types = load_job_types(path)
    assert list(types) == ["haiku"]
    assert types["haiku"].system_prompt == "Answer in a haiku."
    assert types["haiku"].description == ""


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("Bad-Name", entry(), "lowercase letters"),
        ("t", "a string", "must be a table"),
        ("t", entry(colour="red"), "unknown keys ['colour']"),
        ("t", entry(system_prompt="  "), "system_prompt, when given"),
        ("t", entry(system_prompt=3), "system_prompt, when given"),
        ("t", entry(description=3), "description must be a string"),
        ("t", entry(output_schema="{}"), "output_schema must be a table"),
        ("t", entry(output_schema={"type": "array"}), "must describe an object"),
        ("t", entry(output_schema={"type": "object", "minProperties": -1}), "not a JSON schema"),
        (
            "t",
            entry(output_schema={"type": "object", "properties": {"a": {"type": "string"}}}),
            "additionalProperties = false",
        ),
        (
            "t",
            entry(
                output_schema={
                    "type": "object",
                    "properties": {"a": {"type": "string"}},
                    "additionalProperties": False,
                }
            ),
            "every property as required",
        ),
        (
            "t",
            entry(output_schema=closed(a={"type": "array", "items": {"properties": {}}})),
            "output_schema.properties.a.items must set additionalProperties",
        ),
        ("t", entry(breakdown="label"), "breakdown must be a list"),
        ("t", entry(breakdown=["label"]), "breakdown needs an output_schema"),
        ("t", entry(output_schema=TICKET, breakdown=[""]), "non-empty strings"),
        ("t", entry(output_schema=TICKET, breakdown=["la-bel"]), "is not a field name"),
        ("t", entry(output_schema=TICKET, breakdown=["colour"]), "no field 'colour'"),
        ("t", entry(output_schema=TICKET, breakdown=["label[]"]), "'label' is not an array"),
        ("t", entry(output_schema=TICKET, breakdown=["meta"]), "must end at a string"),
        ("t", entry(output_schema=TICKET, breakdown=["items[]"]), "must end at a string"),
        ("t", entry(output_schema=TICKET, breakdown=["label", "label"]), "a field twice"),
    ],
)
def test_a_bad_entry_is_refused_with_what_is_wrong(name: str, value: object, says: str) -> None:
    with pytest.raises(WorkloadFileError, match=f"job_types.{name}") as refused:
        job_type_of(name, value)
    assert says in str(refused.value)


def test_a_file_without_job_types_is_refused() -> None:
    with pytest.raises(WorkloadFileError, match="no \\[job_types"):
        job_types_of({"models": {}})
    with pytest.raises(WorkloadFileError, match="must be a table"):
        job_types_of({"job_types": ["analysis"]})


def test_a_bad_file_stops_the_load(tmp_path: Path) -> None:
    path = tmp_path / "w.toml"
    path.write_text("[job_types.t]\nsystem_prompt = 1\n")
    with pytest.raises(WorkloadFileError, match="system_prompt"):
        load_job_types(path)


def test_breakdown_paths_count_values_at_their_depth() -> None:
    ticket = job_type_of(
        "ticket",
        entry(
            output_schema=TICKET,
            breakdown=["label", "urgent", "meta.team", "items[].kind", "scores[]"],
        ),
    )
    answer = {
        "label": "bug",
        "urgent": True,
        "meta": {"team": "core"},
        "items": [{"kind": "a"}, {"kind": "a"}, {"kind": "b"}],
        "scores": [3, 3, 1],
    }
    parsed = ticket.parse(json.dumps(answer))
    assert parsed.error is None and parsed.value == answer
    assert parsed.breakdown == {
        "label": {"bug": 1, "question": 0},  # an enum's values start at zero
        "urgent": {"true": 1},
        "meta.team": {"core": 1},
        "items[].kind": {"a": 2, "b": 1},
        "scores[]": {"3": 2, "1": 1},
    }
    assert parsed.severity_breakdown is None  # no field named severity


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("not json", "not JSON"),
        ('{"label": "bug"}', "not a ticket document"),  # required fields missing
        (json.dumps({"label": "feature"}), "not a ticket document"),  # outside the enum
    ],
)
def test_an_answer_off_the_schema_is_a_parse_error_not_a_crash(text: str, error: str) -> None:
    ticket = job_type_of("ticket", entry(output_schema=TICKET, breakdown=["label"]))
    parsed = ticket.parse(text)
    assert parsed.value is None and parsed.breakdown is None
    assert parsed.error is not None and parsed.error.startswith(error)


def test_a_fenced_answer_is_read_and_an_unknown_type_parses_nothing() -> None:
    types = load_job_types()
    fenced = '```json\n{"findings": [{"severity": "high", "title": "t", "detail": "d"}]}\n```'
    parsed = types.parse_response("security_analysis", fenced)
    assert parsed.severity_breakdown == {"critical": 0, "high": 1, "medium": 0, "low": 0, "info": 0}
    assert types.parse_response("no_such_type", fenced).value is None
    assert types.parse_response("analysis", "free text").error is None
