"""Session fixtures: a real PostgreSQL and a real Redis, embedded ones if none are reachable."""

from __future__ import annotations

import os
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from mesh.embedded import EmbeddedPostgres, EmbeddedRedis, tcp_reachable
from mesh.migrate import migrate
from mesh.settings import StoreSettings
from mesh.stores import Stores, open_stores

pytest_plugins = ["tests.cluster"]

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parsed = urllib.parse.urlparse(url)
    return parsed.hostname or "127.0.0.1", parsed.port or default_port


@pytest.fixture(scope="session")
def embedded_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where embedded servers for this test run keep their data."""
    return tmp_path_factory.mktemp("embedded")


@pytest.fixture(scope="session")
def pg_admin_url(embedded_dir: Path) -> Iterator[str]:
    """A PostgreSQL server to create test databases on: the configured one, else embedded."""
    url = os.environ.get("DELIVERY_TEST_DATABASE_URL", DEFAULT_PG)
    host, port = _host_port(url, 5432)
    if tcp_reachable(host, port):
        yield url
        return
    server = EmbeddedPostgres(embedded_dir / "postgres")
    try:
        yield server.start("postgres")
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(embedded_dir: Path) -> Iterator[str]:
    """A Redis server: the configured one, else an embedded one."""
    url = os.environ.get("DELIVERY_TEST_REDIS_URL", DEFAULT_REDIS)
    host, port = _host_port(url, 6379)
    if tcp_reachable(host, port):
        yield url
        return
    server = EmbeddedRedis(embedded_dir / "redis", persistent=False)
    try:
        yield server.start()
    finally:
        server.stop()


def _with_database(url: str, name: str) -> str:
    parsed = urllib.parse.urlparse(url)
    return urllib.parse.urlunparse(parsed._replace(path="/" + name))


@pytest.fixture(scope="session")
async def database_url(pg_admin_url: str) -> AsyncIterator[str]:
    """A fresh database for this test run, migrated, dropped at the end."""
    name = f"delivery_test_{uuid.uuid4().hex[:12]}"
    url = _with_database(pg_admin_url, name)
    await migrate(url)
    try:
        yield url
    finally:
        admin = await asyncpg.connect(pg_admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(scope="session")
def store_settings(database_url: str, redis_url: str) -> StoreSettings:
    """Store settings pointing at the test database and Redis."""
    return StoreSettings(database_url=database_url, redis_url=redis_url, db_pool_max=20)


@pytest.fixture(scope="session")
async def stores(store_settings: StoreSettings) -> AsyncIterator[Stores]:
    """An open asyncpg pool and Redis client, shared by the tests of this run."""
    async with open_stores(store_settings) as opened:
        yield opened
