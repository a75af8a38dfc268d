"""Child processes of the local stack: spawn with a log and a pid file, wait, stop."""

from __future__ import annotations

import contextlib
import os
import random
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
    """A part of the stack did not come up. The first line of the message names the cause
    (and the log to read); the lines after it, if any, are the end of that log."""

    @property
    def summary(self) -> str:
        return str(self).splitlines()[0] if str(self) else "unknown cause"


# After SIGKILL the kernel frees a process at once; a wait longer than this means it is
# stuck in the kernel (or is a zombie no one reaps) and waiting longer would hang `down`.
KILL_WAIT_S = 5.0


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
        return pid_alive(self.pid)

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace_s`, never waiting without bound; safe twice."""
        if self.alive():
            self.signal(signal.SIGTERM)
            if not self._wait_gone(grace_s):
                self.signal(signal.SIGKILL)
                self._wait_gone(KILL_WAIT_S)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=KILL_WAIT_S)
        self.pid_path.unlink(missing_ok=True)

    def _wait_gone(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def kill(self) -> None:
        """SIGKILL at once, as a crash would."""
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait()
        self.pid_path.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie (dead, not yet reaped by its parent) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust the signal
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        # A socket of a stopped process in TIME_WAIT must not count as busy.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def require_free(wanted: Sequence[tuple[str, int]]) -> None:
    """Raise `StartupError` naming the first of `(what, port)` whose port is taken, and by whom."""
    for what, port in wanted:
        if not port_free(port):
            holder = port_holder(port)
            raise StartupError(
                f"port {port} (for {what}) is in use"
                + (f" by {holder}" if holder else " by another process")
            )


def port_holder(port: int) -> str | None:
    """`pid N (command)` of the process listening on TCP `port`, when /proc tells."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            # local_address is HEXIP:HEXPORT; state 0A is LISTEN.
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
            if any(os.readlink(fd) in wanted for fd in fds):
                argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
                command = " ".join(" ".join(argv).split())  # one line, also for `-c` scripts
                return f"pid {proc.name} ({command[:80] or '?'})"
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return None


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


# Ports handed out by free_port in this process: a port is given once, so two parts of one
# stack never race for the same one however quickly they are asked for.
_HANDED_OUT: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _listen_range() -> range:
    """Ports a stack may listen on: outside the kernel's ephemeral range, so no outgoing
    connection (a Kafka client, a test's HTTP request) can take one between the moment it is
    chosen and the moment its service binds it."""
    low, high = _ephemeral_range()
    if low - 10_000 >= 1024:
        return range(10_000, low)
    return range(high + 1, 65_536)


def free_port() -> int:
    """A port nothing is bound to on any interface, never handed out before in this process
    and outside the ephemeral range. A port the kernel picks for `bind(0)` comes from that
    range, where an outgoing connection may take it before the service that was told it
    binds it, and a second `bind(0)` may return the same port again."""
    ports = _listen_range()
    for _ in range(1_000):
        port = random.choice(ports)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise StartupError(f"no free port in {ports.start}-{ports.stop - 1} after 1000 tries")


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
            raise StartupError(f"process exited before {host}:{port} opened; {_log(log)}")
        if time.monotonic() > deadline:
            raise StartupError(f"{host}:{port} did not open in {timeout_s:g}s; {_log(log)}")
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
            raise StartupError(f"process exited before {url} was ready ({last}); {_log(log)}")
        if time.monotonic() > deadline:
            raise StartupError(f"{url} not ready in {timeout_s:g}s ({last}); {_log(log)}")
        time.sleep(0.1)


def _log(path: Path | None) -> str:
    """`log: PATH` and, on the lines below, its end (the summary is the first line only)."""
    if path is None:
        return "no log"
    return f"log: {path}\n{tail(path)}"
