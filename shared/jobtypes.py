"""The job types users may submit, read from the `[job_types]` tables of the workload file.

Each type has a system prompt, a description and, for structured types, a strict JSON
schema (`output_schema`): it is sent upstream as an OpenAI `response_format`
(`json_schema`), and `JobType.parse` checks the completion against it with `jsonschema`.
The schema is the one source of truth, so it is validated as written rather than through
pydantic models built from it: no second type system to keep in step with the file.

`breakdown` names fields of the schema whose values analytics counts per job type. The
path syntax: names joined by `.` (`meta.kind`), a `[]` after a name stepping into every
item of that array (`findings[].severity`); the path must end at a string, integer or
boolean field. Counts start at zero for every `enum` value of the field, so a report
with no critical finding still says `critical: 0`.

A wrong entry stops start-up (`WorkloadFileError`, naming the entry and what is wrong).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from shared.workloads import WorkloadFileError, load, section

NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_STEP = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(\[\])?")
_KEYS = frozenset({"description", "system_prompt", "output_schema", "breakdown"})
_SCALARS = frozenset({"string", "integer", "boolean"})
# The breakdown field `severity_breakdown` (the API's older field) reports, when a type has one.
SEVERITY = "severity"


@dataclass(frozen=True, slots=True)
class Step:
    """One name of a breakdown path; `each` when the name is an array stepped into."""

    name: str
    each: bool


@dataclass(frozen=True, slots=True)
class Breakdown:
    """A field analytics counts per value, and the values it starts at zero (its enum)."""

    path: str
    steps: tuple[Step, ...]
    values: tuple[str, ...] = ()

    def count(self, document: Any) -> dict[str, int]:
        counts = dict.fromkeys(self.values, 0)
        for value in _walk(document, self.steps):
            if isinstance(value, bool):
                key = "true" if value else "false"
            elif isinstance(value, str | int):
                key = str(value)
            else:
                continue
            counts[key] = counts.get(key, 0) + 1
        return counts


def _walk(node: Any, steps: tuple[Step, ...]) -> Iterator[Any]:
    if not steps:
        yield node
        return
    step, rest = steps[0], steps[1:]
    if not isinstance(node, dict) or step.name not in node:
        return
    child = node[step.name]
    if step.each:
        if isinstance(child, list):
            for item in child:
                yield from _walk(item, rest)
    else:
        yield from _walk(child, rest)


@dataclass(frozen=True, slots=True)
class ParsedResponse:
    """A response read by its type's schema: `value` None when unstructured or invalid."""

    value: Any = None
    error: str | None = None
    breakdown: dict[str, dict[str, int]] | None = None

    @property
    def severity_breakdown(self) -> dict[str, int] | None:
        """The counts of the first breakdown field named `severity`, as the API always had."""
        if self.breakdown is None:
            return None
        for path, counts in self.breakdown.items():
            if path.rsplit(".", 1)[-1].removesuffix("[]") == SEVERITY:
                return counts
        return None


@dataclass(frozen=True, slots=True)
class JobType:
    name: str
    system_prompt: str
    description: str
    output_schema: dict[str, Any] | None = None
    breakdown: tuple[Breakdown, ...] = ()
    _validator: Any = field(default=None, compare=False, repr=False)

    @property
    def structured(self) -> bool:
        return self.output_schema is not None

    @property
    def breakdown_fields(self) -> list[str]:
        return [b.path for b in self.breakdown]

    def response_format(self) -> dict[str, Any] | None:
        """The OpenAI `response_format` that asks for this type's JSON, or None."""
        if self.output_schema is None:
            return None
        return {
            "type": "json_schema",
            "json_schema": {"name": self.name, "strict": True, "schema": self.output_schema},
        }

    def parse(self, text: str | None) -> ParsedResponse:
        """Parse a completion by this type's schema; raises only RecursionError (nesting
        too deep to read), which the results service isolates like any unstorable record."""
        if self._validator is None or text is None:
            return ParsedResponse()
        try:
            value = json.loads(_strip_fence(text))
        except ValueError as exc:
            return ParsedResponse(error=f"not JSON: {exc}")
        errors = sum(1 for _ in self._validator.iter_errors(value))
        if errors:
            return ParsedResponse(error=f"not a {self.name} document: {errors} errors")
        counts = {b.path: b.count(value) for b in self.breakdown}
        return ParsedResponse(value=value, breakdown=counts or None)


def _strip_fence(text: str) -> str:
    # Models often wrap JSON in a Markdown code fence despite being asked not to.
    body = text.strip()
    if body.startswith("```"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
        body = body.removesuffix("```").rstrip().removesuffix("```")
    return body


class JobTypes(Mapping[str, JobType]):
    """The loaded job types by name, in the file's order."""

    def __init__(self, types: Mapping[str, JobType]) -> None:
        self._types = dict(types)

    def __getitem__(self, name: str) -> JobType:
        return self._types[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._types)

    def __len__(self) -> int:
        return len(self._types)

    def parse_response(self, job_type: str, text: str | None) -> ParsedResponse:
        """Parse a completion by its job type's schema (none known: nothing parsed)."""
        known = self._types.get(job_type)
        return known.parse(text) if known is not None else ParsedResponse()


def _refuse(name: str, what: str) -> WorkloadFileError:
    return WorkloadFileError(f"[job_types.{name}]: {what}")


def _strictness(schema: Any, where: str) -> str | None:
    """Where `schema` breaks OpenAI's strict mode (objects close and require every property)."""
    if isinstance(schema, list):
        for i, item in enumerate(schema):
            if (problem := _strictness(item, f"{where}[{i}]")) is not None:
                return problem
        return None
    if not isinstance(schema, dict):
        return None
    properties = schema.get("properties")
    if isinstance(properties, dict):
        if schema.get("additionalProperties") is not False:
            return f"{where} must set additionalProperties = false (strict schema)"
        missing = [p for p in properties if p not in schema.get("required", [])]
        if missing:
            return f"{where} must list every property as required (strict): {missing}"
    for key, value in schema.items():
        if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            for name, sub in value.items():
                if (problem := _strictness(sub, f"{where}.{key}.{name}")) is not None:
                    return problem
        elif key in ("items", "anyOf", "allOf", "oneOf", "prefixItems") and (
            (problem := _strictness(value, f"{where}.{key}")) is not None
        ):
            return problem
    return None


def _breakdown(name: str, path: object, schema: dict[str, Any]) -> Breakdown:
    if not isinstance(path, str) or not path:
        raise _refuse(name, f"breakdown entries must be non-empty strings, not {path!r}")
    steps: list[Step] = []
    node: Any = schema
    for part in path.split("."):
        match = _STEP.fullmatch(part)
        if match is None:
            raise _refuse(name, f"breakdown {path!r}: {part!r} is not a field name (or name[])")
        step = Step(match.group(1), match.group(2) is not None)
        properties = node.get("properties") if isinstance(node, dict) else None
        if not isinstance(properties, dict) or step.name not in properties:
            raise _refuse(name, f"breakdown {path!r}: the schema has no field {step.name!r}")
        node = properties[step.name]
        if step.each:
            if not isinstance(node, dict) or node.get("type") != "array":
                raise _refuse(name, f"breakdown {path!r}: {step.name!r} is not an array")
            node = node.get("items", {})
        steps.append(step)
    kind = node.get("type") if isinstance(node, dict) else None
    enum = node.get("enum") if isinstance(node, dict) else None
    if kind not in _SCALARS and not isinstance(enum, list):
        raise _refuse(
            name, f"breakdown {path!r} must end at a string, integer or boolean field, not {kind!r}"
        )
    values = tuple(str(v).lower() if isinstance(v, bool) else str(v) for v in enum or ())
    return Breakdown(path, tuple(steps), values)


def job_type_of(name: str, entry: object) -> JobType:
    """One `[job_types.<name>]` table as a job type; raises `WorkloadFileError`."""
    if not NAME.fullmatch(name):
        raise _refuse(name, "a job type's name is lowercase letters, digits and _ (at most 64)")
    if not isinstance(entry, dict):
        raise _refuse(name, f"must be a table, not {type(entry).__name__}")
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise _refuse(name, f"unknown keys {unknown} (known: {sorted(_KEYS)})")
    # Absent: the messages go upstream as given, with no instructions of ours.
    prompt = entry.get("system_prompt", "")
    if not isinstance(prompt, str) or ("system_prompt" in entry and not prompt.strip()):
        raise _refuse(name, "system_prompt, when given, is a non-empty string")
    description = entry.get("description", "")
    if not isinstance(description, str):
        raise _refuse(name, "description must be a string")
    schema = entry.get("output_schema")
    validator = None
    if schema is not None:
        if not isinstance(schema, dict):
            raise _refuse(name, "output_schema must be a table (a JSON schema)")
        if schema.get("type") != "object":
            raise _refuse(name, 'output_schema must describe an object (type = "object")')
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise _refuse(name, f"output_schema is not a JSON schema: {exc.message}") from exc
        if (problem := _strictness(schema, "output_schema")) is not None:
            raise _refuse(name, problem)
        validator = cls(schema)
    paths = entry.get("breakdown", [])
    if not isinstance(paths, list):
        raise _refuse(name, "breakdown must be a list of field paths")
    if paths and schema is None:
        raise _refuse(name, "breakdown needs an output_schema: it counts fields of the answer")
    breakdown = tuple(_breakdown(name, p, schema or {}) for p in paths)
    if len({b.path for b in breakdown}) != len(breakdown):
        raise _refuse(name, "breakdown lists a field twice")
    return JobType(name, prompt, description, schema, breakdown, validator)


def job_types_of(document: dict[str, Any]) -> JobTypes:
    """Every job type of a parsed workload file; raises `WorkloadFileError`."""
    entries = section(document, "job_types")
    if not entries:
        raise WorkloadFileError("the workload file defines no [job_types.<name>]: none to submit")
    return JobTypes({name: job_type_of(name, entry) for name, entry in entries.items()})


@functools.cache
def _load(path: str) -> JobTypes:
    return job_types_of(load(path or None))


def load_job_types(path: str | Path | None = None) -> JobTypes:
    """The job types of the workload file at `path` (empty: the packaged defaults), read once."""
    return _load(str(path) if path else "")
