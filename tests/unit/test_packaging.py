"""What the package carries: its SQL migrations or a loud error, and one version everywhere."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest

from services.gateway.routes import build_document
from services.results.migrations import load
from shared import __version__
from shared.asyncapi import build_spec
from shared.cli import main


def test_the_packaged_migrations_load_in_order() -> None:
    versions = [m.version for m in load()]
    assert versions == sorted(versions) and versions[0] == 1


def test_a_missing_migration_set_is_an_error_not_an_empty_schema(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no SQL migrations"):
        load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no SQL migrations"):
        load(tmp_path / "absent")


def test_the_command_the_openapi_and_the_asyncapi_documents_share_the_package_version(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert __version__ == version("streamjobs")
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"streamjobs {__version__}"
    assert build_document()["info"]["version"] == __version__
    assert build_spec()["info"]["version"] == __version__


def test_the_command_without_a_subcommand_prints_its_usage_and_fails(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([]) == 2
    assert "usage: streamjobs" in capsys.readouterr().err
