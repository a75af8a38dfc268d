"""The operator's workload file: job types and models (upstreams, prices) in one TOML document.

Every service reads the same file (`STREAMJOBS_WORKLOADS_FILE`; empty: the packaged
`workloads.toml`, which holds the defaults), so the gateway validates against exactly
what the streamer runs and the results service prices. TOML because Python 3.11 reads
it with the standard library (`tomllib`) and operators can comment it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

DEFAULT_FILE = Path(__file__).with_name("workloads.toml")
# The tables a file may leave out: each absent one is the packaged file's, so a file that
# only adds upstreams keeps the default job types (and one with only job types, the models).
SECTIONS = ("job_types", "models")


class WorkloadFileError(ValueError):
    """The workload file is missing, not TOML, or says something it may not."""


def load(path: str | Path | None = None) -> dict[str, Any]:
    """The parsed workload file at `path` (None or empty: the packaged defaults); a table of
    `SECTIONS` it leaves out is the packaged file's."""
    document = _read(Path(path) if path else DEFAULT_FILE)
    missing = [name for name in SECTIONS if name not in document]
    if missing and path:
        defaults = _read(DEFAULT_FILE)
        document.update({name: defaults.get(name, {}) for name in missing})
    return document


def _read(target: Path) -> dict[str, Any]:
    try:
        with target.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise WorkloadFileError(f"cannot read the workload file {target}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise WorkloadFileError(f"the workload file {target} is not TOML: {exc}") from exc


def section(document: dict[str, Any], name: str) -> dict[str, Any]:
    """One top-level table of the document (`job_types`, `models`); empty when absent."""
    value = document.get(name, {})
    if not isinstance(value, dict):
        raise WorkloadFileError(f"[{name}] must be a table, not {type(value).__name__}")
    return value
