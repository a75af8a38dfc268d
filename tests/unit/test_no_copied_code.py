"""No logic copied between services: the same six lines twice in services/ or shared/ fail.

pylint's similarity checker compares every pair of files line by line (comments,
docstrings, imports and signatures aside): a run of six equal lines means one place
should call the other.
"""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_services_and_shared_hold_no_six_equal_lines_twice() -> None:
    found = subprocess.run(
        [
            sys.executable,
            "-m",
            "pylint",
            "--disable=all",
            "--enable=duplicate-code",
            "--min-similarity-lines=6",
            "--ignore-imports=y",
            "--ignore-signatures=y",
            "--score=n",
            "services",
            "shared",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert found.returncode == 0, f"copied code:\n{found.stdout}{found.stderr}"
    assert "duplicate-code" not in found.stdout
