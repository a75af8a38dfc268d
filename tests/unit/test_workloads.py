"""The workload file: a table it leaves out is the packaged file's, one it gives replaces it."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared import upstreams, workloads
from shared.jobtypes import load_job_types
from shared.workloads import WorkloadFileError

DEFAULT_TYPES = {"analysis", "chat", "security_analysis", "gas_analysis", "sentiment_analysis"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "workloads.toml"
    path.write_text(text)
    return path


def test_a_file_of_models_only_keeps_the_packaged_job_types(tmp_path: Path) -> None:
    path = write(tmp_path, '[models."m"]\n[[models."m".upstreams]]\nname = "u"\n')
    assert set(load_job_types(path)) == DEFAULT_TYPES
    assert list(upstreams.load(path).models) == ["m"], "its own models replace the defaults"


def test_a_file_of_job_types_only_keeps_the_packaged_models(tmp_path: Path) -> None:
    path = write(tmp_path, '[job_types.triage]\nsystem_prompt = "Sort the ticket."\n')
    assert list(load_job_types(path)) == ["triage"]
    assert upstreams.load(path).knows("gpt-4o-mini")


def test_an_empty_table_is_given_not_left_out(tmp_path: Path) -> None:
    path = write(tmp_path, "[job_types]\n")
    with pytest.raises(WorkloadFileError, match="no \\[job_types"):
        load_job_types(path)


def test_a_file_that_is_not_toml_is_refused_with_its_path(tmp_path: Path) -> None:
    path = write(tmp_path, "[models\n")
    with pytest.raises(WorkloadFileError, match=str(path)):
        workloads.load(path)
