"""Applies the numbered SQL files under ``migrations/``, each once, each in its own transaction."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import asyncpg

logger = logging.getLogger(__name__)

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any constant works; it only has to be the same for every process of this project.
_LOCK_KEY = 0x6D657368  # "mesh"


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file, to catch edits to a migration that was already applied."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_dir() -> Path:
    """``DELIVERY_MIGRATIONS_DIR``, or ``migrations/`` at the root of the source tree."""
    configured = os.environ.get("DELIVERY_MIGRATIONS_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parent.parent / "migrations"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """Every migration file in version order; refuses gaps in numbering and stray files."""
    directory = directory or migrations_dir()
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise ValueError(f"migration file {path.name} is not named NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise ValueError(f"migration versions must run 1..n without gaps, got {versions}")
    return found


def database_name(dsn: str) -> str:
    """The database a ``postgresql://`` DSN names (its path, or a ``dbname`` parameter)."""
    parsed = urllib.parse.urlparse(dsn)
    query = urllib.parse.parse_qs(parsed.query)
    return (query.get("dbname") or [parsed.path.lstrip("/")])[0] or "postgres"


async def ensure_database(dsn: str) -> None:
    """Creates the database ``dsn`` names if the server lacks it (first run on a fresh server)."""
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        name = database_name(dsn)
        admin = await asyncpg.connect(dsn, database="postgres")
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
            logger.info("created database %s", name)
        except asyncpg.DuplicateDatabaseError:
            pass
        finally:
            await admin.close()
    else:
        await conn.close()


async def migrate(dsn: str, directory: Path | None = None) -> list[int]:
    """Applies pending migrations and returns the versions applied now (empty if none)."""
    migrations = load_migrations(directory)
    await ensure_database(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        # Services started together may all migrate at once; one does the work.
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            await conn.execute(
                """
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version integer PRIMARY KEY,
                    name text NOT NULL,
                    checksum text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )
                """
            )
            rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
            applied = {r["version"]: r["checksum"] for r in rows}
            done: list[int] = []
            for migration in migrations:
                if migration.version in applied:
                    if applied[migration.version] != migration.checksum:
                        raise RuntimeError(
                            f"migration {migration.version:04d}_{migration.name} changed after it"
                            " was applied; add a new migration instead of editing this one"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum)"
                        " VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
                logger.info("applied migration %04d_%s", migration.version, migration.name)
                done.append(migration.version)
            return done
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await conn.close()
