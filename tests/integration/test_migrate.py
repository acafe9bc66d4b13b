"""`delivery migrate` applies every file once and is safe to run again."""

from __future__ import annotations

import asyncio
import sys
import uuid

import asyncpg
import pytest

from mesh.migrate import load_migrations, migrate
from tests.conftest import _with_database

SCHEMA_QUERY = """
SELECT 'column' AS kind, table_name || '.' || column_name || ':' || data_type
       || ':' || is_nullable || ':' || coalesce(column_default, '') AS what
  FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL
SELECT 'index', indexname || ':' || indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL
SELECT 'constraint', conrelid::regclass || '.' || conname || ':' || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT 'function', p.proname || ':' || md5(pg_get_functiondef(p.oid))
  FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
UNION ALL
SELECT 'trigger', tgrelid::regclass || '.' || tgname FROM pg_trigger WHERE NOT tgisinternal
ORDER BY 1, 2
"""


async def _schema(url: str) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(url)
    try:
        return [(r["kind"], r["what"]) for r in await conn.fetch(SCHEMA_QUERY)]
    finally:
        await conn.close()


@pytest.fixture
async def scratch_url(pg_admin_url: str):
    name = f"delivery_mig_{uuid.uuid4().hex[:10]}"
    url = _with_database(pg_admin_url, name)
    yield url
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def test_migrate_twice_leaves_the_same_schema(scratch_url: str) -> None:
    # The database does not exist yet: migrate creates it.
    applied = await migrate(scratch_url)
    assert applied == [m.version for m in load_migrations()]
    first = await _schema(scratch_url)
    tables = {what.split(".")[0] for kind, what in first if kind == "column"}
    for table in (
        "users",
        "drivers",
        "merchants",
        "menu_items",
        "menu_option_groups",
        "menu_options",
        "orders",
        "order_items",
        "driver_offers",
        "idempotency_keys",
        "ratings",
        "notifications",
        "outbox",
        "driver_location_history",
        "retention_policies",
    ):
        assert table in tables, table

    assert await migrate(scratch_url) == []
    assert await _schema(scratch_url) == first


async def test_delivery_migrate_command_runs_twice(scratch_url: str) -> None:
    for expected in ("applied 0001", "schema is up to date"):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mesh.cli",
            "migrate",
            "--database-url",
            scratch_url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode == 0, err.decode()
        assert expected in out.decode()


async def test_location_history_is_partitioned_by_day(scratch_url: str) -> None:
    await migrate(scratch_url)
    conn = await asyncpg.connect(scratch_url)
    try:
        kind = await conn.fetchval(
            "SELECT partstrat FROM pg_partitioned_table"
            " WHERE partrelid = 'driver_location_history'::regclass"
        )
        assert kind == b"r"  # RANGE ("char" comes back as bytes)
        partition = await conn.fetchval(
            """
            INSERT INTO driver_location_history (driver_id, recorded_at, received_at, lat, lng)
            VALUES (gen_random_uuid(), now(), now(), 52.5, 13.4)
            RETURNING tableoid::regclass::text
            """
        )
        today = await conn.fetchval("SELECT to_char((now() AT TIME ZONE 'UTC')::date, 'YYYYMMDD')")
        assert partition == f"driver_location_history_{today}"
    finally:
        await conn.close()
