"""Versioned SQL migrations (`migrations/NNNN_name.sql`), each applied once, under a lock."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

import asyncpg

log = logging.getLogger(__name__)

# Package data of `services.results`: installed with the wheel, read in place from a checkout.
MIGRATIONS_DIR = files("services.results") / "migrations"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# Any constant shared by every results instance: they take turns migrating.
_LOCK_KEY = 0x73_6A_72_65_73  # "sjres"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load(directory: Traversable = MIGRATIONS_DIR) -> list[Migration]:
    """Every migration in `directory`, in order; none at all is an install without its SQL."""
    found = []
    sql_files = directory.iterdir() if directory.is_dir() else iter(())
    for path in sorted((p for p in sql_files if p.name.endswith(".sql")), key=lambda p: p.name):
        match = _NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file {path.name} is not named NNNN_name.sql")
        found.append(
            Migration(int(match.group(1)), path.name.removesuffix(".sql"), path.read_text())
        )
    if not found:
        raise FileNotFoundError(f"no SQL migrations in {directory}: the package lacks its data")
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migrations share a version: {versions}")
    return found


async def migrate(conn: asyncpg.Connection, directory: Traversable = MIGRATIONS_DIR) -> list[str]:
    """Apply the migrations not yet recorded in `schema_migrations`; returns their names."""
    migrations = load(directory)  # before the lock: an install without its SQL touches nothing
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in migrations:
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            log.info("applied migration %s", migration.name)
            applied.append(migration.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied
