"""Lifespans of the shared stores: the asyncpg pool and the Redis client."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster

from mesh.resp import FastPackConnection
from mesh.settings import StoreSettings

logger = logging.getLogger(__name__)

CLUSTER_SCHEME = "redis+cluster://"


@dataclass(frozen=True, slots=True)
class Stores:
    """The connections a service was started with; ``None`` where it needs none."""

    #: PostgreSQL, the system of record.
    pool: asyncpg.Pool | None = None
    #: Redis (single node or cluster client; both speak the same commands).
    redis: Redis | None = None


async def _reset_if_dirty(conn: asyncpg.Connection) -> None:
    """Resets a connection returned to the pool only if it holds a transaction.

    asyncpg's default reset costs a round trip on every release (RESET ALL, UNLISTEN, ...).
    The services use no session state (no LISTEN, SET or advisory locks on pooled
    connections), so a clean connection goes back as it is.
    """
    if conn.is_in_transaction():
        await conn.reset()


@contextlib.asynccontextmanager
async def db_pool(settings: StoreSettings) -> AsyncIterator[asyncpg.Pool]:
    """An asyncpg pool, closed on exit."""
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        # Statements are prepared per connection; a large cache keeps the hot ones.
        statement_cache_size=256,
        reset=_reset_if_dirty,
    )
    try:
        yield pool
    finally:
        await pool.close()


def make_redis(settings: StoreSettings) -> Redis:
    """A Redis client for ``settings.redis_url``; ``redis+cluster://`` gives a cluster client."""
    url = settings.redis_url
    if url.startswith(CLUSTER_SCHEME):
        cluster = RedisCluster.from_url(
            "redis://" + url[len(CLUSTER_SCHEME) :],
            max_connections=settings.redis_max_connections,
            connection_class=FastPackConnection,
        )
        # RedisCluster speaks the same command API; typing it as Redis keeps callers simple.
        return cluster  # type: ignore[return-value]
    # A blocking pool: a burst (thousands of GPS streams reconnecting at once) waits briefly
    # for a connection instead of failing calls with "too many connections".
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=settings.redis_max_connections,
        timeout=10,
        connection_class=FastPackConnection,
    )
    # from_pool: closing the client closes its pool too.
    return Redis.from_pool(pool)


@contextlib.asynccontextmanager
async def redis_client(settings: StoreSettings) -> AsyncIterator[Redis]:
    """A Redis client that has answered PING, closed on exit."""
    client = make_redis(settings)
    try:
        await client.ping()
        yield client
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def open_stores(
    settings: StoreSettings, *, postgres: bool = True, redis: bool = True
) -> AsyncIterator[Stores]:
    """Opens the stores a service asks for and closes them, in reverse order, on exit."""
    async with contextlib.AsyncExitStack() as stack:
        pool = await stack.enter_async_context(db_pool(settings)) if postgres else None
        client = await stack.enter_async_context(redis_client(settings)) if redis else None
        yield Stores(pool=pool, redis=client)
