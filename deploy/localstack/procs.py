"""Child processes of the local stack: spawn with a log and a pid file, wait, stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


class StartupError(RuntimeError):
    """A process of the stack did not come up; the message names its log."""


@dataclass
class ManagedProcess:
    name: str
    pid: int
    pid_path: Path
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    @classmethod
    def spawn(
        cls,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        pid_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,  # a Ctrl-C in the terminal does not reach it
            )
        pid_path.write_text(str(popen.pid))
        return cls(name, popen.pid, pid_path, log_path, popen)

    @classmethod
    def from_pid_file(cls, name: str, pid_path: Path, log_path: Path) -> ManagedProcess | None:
        try:
            pid = int(pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return cls(name, pid, pid_path, log_path)

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace_s`; safe to call twice."""
        if self.alive():
            self.signal(signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.alive():
                self.signal(signal.SIGKILL)
                while self.alive():
                    time.sleep(0.02)
        if self.popen is not None:
            self.popen.wait()
        self.pid_path.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL at once, as a crash would."""
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait()
        self.pid_path.unlink(missing_ok=True)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    host: str,
    port: int,
    timeout_s: float,
    *,
    alive: Callable[[], bool] = lambda: True,
    log: Path | None = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if not alive():
            raise StartupError(f"process exited before {host}:{port} opened; log:\n{_log(log)}")
        if time.monotonic() > deadline:
            raise StartupError(f"{host}:{port} did not open in {timeout_s}s; log:\n{_log(log)}")
        time.sleep(0.1)


def wait_for_http(
    url: str,
    timeout_s: float,
    *,
    alive: Callable[[], bool] = lambda: True,
    log: Path | None = None,
) -> None:
    """Wait until `url` answers 200 (a service's /readyz)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:300]!r}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        if not alive():
            raise StartupError(f"process exited before {url} was ready ({last}); log:\n{_log(log)}")
        if time.monotonic() > deadline:
            raise StartupError(f"{url} not ready in {timeout_s}s ({last}); log:\n{_log(log)}")
        time.sleep(0.1)


def _log(path: Path | None) -> str:
    return f"{path}\n{tail(path)}" if path else "(none)"
