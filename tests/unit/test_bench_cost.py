"""The cost scenario's CPU accounting: a process counts for its nearest root, grandchildren too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.bench.cost import tree_cpu

# Burns 0.6 s of CPU, says so, then waits to be killed.
_BURNER = """
import time
end = time.process_time() + 0.6
while time.process_time() < end:
    pass
print("burnt", flush=True)
time.sleep(30)
"""
# Starts the burner (its grandchild here), prints its pid, and waits for it.
_PARENT = """
import subprocess, sys
burner = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
print(burner.pid, flush=True)
burner.wait()
"""


def test_a_grandchilds_cpu_counts_for_its_root_and_not_for_another() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, _BURNER], stdout=subprocess.PIPE, text=True
    )
    grandchild = 0
    try:
        assert parent.stdout is not None
        grandchild = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "burnt"
        # The burner's 0.6 s (in clock ticks) count under its grandparent's name...
        totals = tree_cpu({parent.pid: "stack", os.getpid(): "bench"})
        assert totals["stack"] >= 0.5
        # ...not under this process's, though it descends from this one too: nearest root wins.
        everything = tree_cpu({os.getpid(): "bench"})["bench"]
        assert everything - totals["bench"] >= 0.5
        # A root of its own takes them from its parent.
        alone = tree_cpu({grandchild: "burner", parent.pid: "stack"})
        assert alone["burner"] >= 0.5
        assert alone["stack"] < totals["stack"] - 0.4
    finally:
        if grandchild:
            os.kill(grandchild, signal.SIGKILL)
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
