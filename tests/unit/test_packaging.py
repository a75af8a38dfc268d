"""What the package carries: its SQL migrations are there or loading them fails loudly."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.results.migrations import load


def test_the_packaged_migrations_load_in_order() -> None:
    versions = [m.version for m in load()]
    assert versions == sorted(versions) and versions[0] == 1


def test_a_missing_migration_set_is_an_error_not_an_empty_schema(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no SQL migrations"):
        load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no SQL migrations"):
        load(tmp_path / "absent")
