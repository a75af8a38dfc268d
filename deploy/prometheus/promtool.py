"""Run `promtool` (Debian package `prometheus`) on our config, rules and exposition output."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "prometheus.yml"
RULES = HERE / "alerts.yml"
RULE_TESTS = HERE / "alerts_test.yml"


class PromtoolMissing(RuntimeError):
    def __init__(self) -> None:
        super().__init__(
            "promtool is not on PATH: install the Debian package `prometheus` "
            "(apt-get install prometheus) or a Prometheus release that ships promtool"
        )


def promtool(*args: str, stdin: bytes | None = None, timeout_s: float = 60.0) -> tuple[int, str]:
    """`promtool ARGS`, its exit code and its combined output."""
    exe = shutil.which("promtool")
    if exe is None:
        raise PromtoolMissing
    done = subprocess.run(  # a fixed executable with our own arguments
        [exe, *args],
        input=stdin,
        capture_output=True,
        timeout=timeout_s,
        check=False,
    )
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace")
