"""The built package on its own: a wheel in a fresh venv runs the services with their data.

The wheel is built from the sdist (so the sdist is complete too) and installed with the
locked runtime dependencies only; the services then start from that venv, outside the
checkout, so nothing can be read from the source tree by accident.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from deploy.localstack.procs import ManagedProcess, free_port, wait_for_http
from services.results.migrations import load
from shared import __version__

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
COMMAND_TIMEOUT_S = 300.0
# The checkout's own environment must not leak into the installed one.
ISOLATED_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


@dataclass(frozen=True)
class Installed:
    root: Path
    python: Path

    def bin(self, name: str) -> Path:
        return self.python.parent / name


def uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert found, "uv is not installed: run make install"
    return found


async def run(*argv: str | Path, cwd: Path = ROOT) -> str:
    proc = await asyncio.create_subprocess_exec(
        *map(str, argv),
        cwd=cwd,
        env=ISOLATED_ENV,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{argv} took longer than {COMMAND_TIMEOUT_S:g}s") from None
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"{argv} failed ({proc.returncode}):\n{text}"
    return text


@pytest.fixture(scope="module")
async def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel and the locked runtime dependencies (no extras) in a venv of their own."""
    root = tmp_path_factory.mktemp("packaging")
    dist, venv, requirements = root / "dist", root / "venv", root / "requirements.txt"
    await run(uv(), "build", "--out-dir", dist, ROOT)
    (wheel,) = dist.glob("streamjobs-*.whl")
    await run(uv(), "venv", "--python", sys.executable, venv)
    python = venv / "bin" / "python"
    await run(uv(), "export", "--frozen", "--no-emit-project", "--output-file", requirements)
    await run(uv(), "pip", "install", "--python", python, "--requirement", requirements)
    await run(uv(), "pip", "install", "--python", python, "--no-deps", wheel)
    return Installed(root, python)


@contextmanager
def service(installed: Installed, name: str, port: int, env: dict[str, str]) -> Iterator[None]:
    """`python -m services.NAME` of the installed venv, run from outside the checkout."""
    logs = installed.root / "logs"
    proc = ManagedProcess.spawn(
        name,
        [str(installed.python), "-m", f"services.{name}"],
        log_path=logs / f"{name}.log",
        pid_path=logs / f"{name}.pid",
        env={"PYTHONUNBUFFERED": "1", **env},
        cwd=installed.root,
    )
    try:
        wait_for_http(
            f"http://127.0.0.1:{port}/readyz", 60, alive=proc.alive, log=logs / f"{name}.log"
        )
        yield
    finally:
        proc.stop(grace_s=25)


async def test_the_installed_package_imports_from_its_venv_and_prints_its_version(
    installed: Installed,
) -> None:
    where = await run(
        installed.python, "-c", "import services; print(services.__file__)", cwd=installed.root
    )
    assert Path(where.strip()).is_relative_to(installed.root / "venv"), where
    printed = await run(installed.bin("streamjobs"), "--version", cwd=installed.root)
    assert printed.strip() == f"streamjobs {__version__}"


async def test_the_installed_results_and_gateway_serve_their_migrations_dashboard_and_docs(
    installed: Installed,
    kafka_bootstrap: str,
    database_url: str,
    topic_prefix: str,
    auth_secret: str,
) -> None:
    results_port, gateway_port = free_port(), free_port()
    common = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "TOPIC_PREFIX": topic_prefix,
        "STREAMJOBS_AUTH_SECRET": auth_secret,
    }
    gateway_env = {
        **common,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(gateway_port),
        "RESULTS_URL": f"http://127.0.0.1:{results_port}",
    }
    with (
        service(
            installed,
            "results",
            results_port,
            {**common, "DATABASE_URL": database_url, "RESULTS_PORT": str(results_port)},
        ),
        service(installed, "gateway", gateway_port, gateway_env),
    ):
        conn = await asyncpg.connect(database_url)
        try:
            applied = await conn.fetch("SELECT name FROM schema_migrations ORDER BY version")
            tables = await conn.fetchval(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename = ANY($1::text[])",
                ["jobs", "results", "events", "chunks"],
            )
        finally:
            await conn.close()
        assert [r["name"] for r in applied] == [m.name for m in load()]
        assert tables == 4

        async with aiohttp.ClientSession(f"http://127.0.0.1:{gateway_port}") as http:
            for path, content_type in [
                ("/dashboard", "text/html"),
                ("/dashboard.js", "text/javascript"),
                ("/dashboard.css", "text/css"),
                ("/api/v1/docs", "text/html"),
                ("/api/v1/docs/swagger-ui-bundle.js", "text/javascript"),
                ("/api/v1/docs/swagger-ui.css", "text/css"),
                ("/api/v1/docs/docs.js", "text/javascript"),
            ]:
                async with http.get(path) as resp:
                    body = await resp.read()
                    assert resp.status == 200, (path, resp.status)
                    assert resp.content_type == content_type
                    assert body, path
