"""Lifespans of the shared stores: the asyncpg pool and the Redis client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from asyncpg.pool import PoolAcquireContext
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


class TimedPool(asyncpg.Pool):
    """An asyncpg pool whose :meth:`acquire` waits at most ``acquire_timeout_s`` by default.

    asyncpg's own default is to wait forever: with PostgreSQL frozen, every connection stays
    busy with a statement that never returns and each new call would queue behind them.
    """

    def __init__(self, *args: Any, acquire_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acquire_timeout_s = acquire_timeout_s
        self._settling: set[asyncio.Task[None]] = set()

    def acquire(self, *, timeout: float | None = None) -> PoolAcquireContext:
        """A pooled connection; ``fetch``, ``execute`` and the rest go through here too."""
        return super().acquire(timeout=self.acquire_timeout_s if timeout is None else timeout)

    async def release(self, connection: Any, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Returns ``connection`` to the pool; one whose statement timed out is returned in
        the background, once its cancellation is settled.

        asyncpg would have the caller wait for that cancellation, which on a frozen server
        takes another command timeout: the call's UNAVAILABLE would come twice as late.
        """
        if _cancelling(connection):
            task = asyncio.get_running_loop().create_task(
                super().release(connection, timeout=timeout)
            )
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)
            return
        await super().release(connection, timeout=timeout)


def _cancelling(connection: Any) -> bool:
    """Whether a pooled connection still waits for a statement's cancellation (asyncpg's own
    state; False if that ever moves)."""
    protocol = getattr(getattr(connection, "_con", None), "_protocol", None)
    is_cancelling = getattr(protocol, "_is_cancelling", None)
    return bool(is_cancelling is not None and is_cancelling())


@contextlib.asynccontextmanager
async def db_pool(settings: StoreSettings) -> AsyncIterator[asyncpg.Pool]:
    """An asyncpg pool with the settings' timeouts, closed on exit."""
    pool = await TimedPool(
        settings.database_url,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        acquire_timeout_s=settings.db_acquire_timeout_s,
        # Statements are prepared per connection; a large cache keeps the hot ones.
        statement_cache_size=256,
        reset=_reset_if_dirty,
        timeout=settings.db_connect_timeout_s,
        command_timeout=settings.db_command_timeout_s,
    )
    try:
        yield pool
    finally:
        await pool.close()


def _word(arg: object) -> bytes:
    """A command argument as upper-case bytes, for recognising command names and options."""
    if isinstance(arg, bytes):
        return arg.upper()
    if isinstance(arg, str):
        return arg.encode().upper()
    return b""


def _number(arg: object) -> float:
    return float(arg.decode() if isinstance(arg, bytes) else arg)  # type: ignore[arg-type]


# Blocking commands whose timeout, in seconds, is the last argument.
_BLOCK_LAST_S = frozenset({b"BLPOP", b"BRPOP", b"BRPOPLPUSH", b"BLMOVE", b"BZPOPMIN", b"BZPOPMAX"})
# Blocking commands whose timeout, in seconds, is the first argument.
_BLOCK_FIRST_S = frozenset({b"BLMPOP", b"BZMPOP"})
# Blocking commands whose timeout, in milliseconds, is the last argument.
_BLOCK_LAST_MS = frozenset({b"WAIT", b"WAITAOF"})
# Blocking commands with a ``BLOCK <milliseconds>`` option.
_BLOCK_OPTION_MS = frozenset({b"XREAD", b"XREADGROUP"})


def block_seconds(args: Sequence[object]) -> float | None:
    """How long the Redis command ``args`` may block on the server by design: ``None`` for a
    command that does not block, ``math.inf`` for one that blocks until it is answered."""
    if not args:
        return None
    name = _word(args[0])
    words = name.split()
    if len(words) > 1:  # a command name given with its arguments ("XREAD BLOCK ...")
        name, args = words[0], [*words[1:], *args[1:]]
    try:
        if name in _BLOCK_LAST_S and len(args) > 1:
            seconds = _number(args[-1])
        elif name in _BLOCK_FIRST_S and len(args) > 1:
            seconds = _number(args[1])
        elif name in _BLOCK_LAST_MS and len(args) > 1:
            seconds = _number(args[-1]) / 1000
        elif name in _BLOCK_OPTION_MS:
            words = [_word(a) for a in args]
            if b"BLOCK" not in words:
                return None
            at = words.index(b"BLOCK")
            # The option comes before STREAMS; after it, a stream could be named "BLOCK".
            if b"STREAMS" in words and words.index(b"STREAMS") < at:
                return None
            seconds = _number(args[at + 1]) / 1000
        else:
            return None
    except (ValueError, TypeError, IndexError):
        return None
    return math.inf if seconds == 0 else seconds


class StoreConnection(FastPackConnection):
    """A Redis connection whose reply timeout leaves room for commands that block by design.

    The client's ``socket_timeout`` bounds every reply, so a frozen Redis fails a call within
    it; a blocking read (``XREADGROUP ... BLOCK 5000``, ``BLPOP key 5``) gets its block time on
    top, and one that blocks for ever (``BLOCK 0``) waits for ever. Pub/sub reads pass their
    own timeout and are not touched.
    """

    _block_s: float | None = None

    def pack_command(self, *args: Any) -> list[bytes]:
        self._block_s = block_seconds(args)
        return super().pack_command(*args)

    def pack_commands(self, commands: Iterable[Iterable[Any]]) -> list[bytes]:
        # A pipeline: every reply gets the room of its longest blocking command.
        listed = [tuple(c) for c in commands]
        blocks = [b for b in (block_seconds(c) for c in listed) if b is not None]
        packed = super().pack_commands(listed)
        self._block_s = max(blocks) if blocks else None
        return packed

    async def read_response(
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 - redis-py's signature
        *,
        disconnect_on_error: bool = True,
        push_request: bool | None = False,
    ) -> Any:
        base = self.socket_timeout
        if timeout is None and self._block_s is not None and base is not None:
            # Only for this reply; the attribute is the connection's own, used by one caller.
            self.socket_timeout = base + self._block_s
            try:
                return await super().read_response(
                    disable_decoding,
                    None,
                    disconnect_on_error=disconnect_on_error,
                    push_request=push_request,
                )
            finally:
                self.socket_timeout = base
        return await super().read_response(
            disable_decoding,
            timeout,
            disconnect_on_error=disconnect_on_error,
            push_request=push_request,
        )


def make_redis(settings: StoreSettings) -> Redis:
    """A Redis client for ``settings.redis_url``; ``redis+cluster://`` gives a cluster client.

    Replies are bounded by ``settings.redis_timeout_s`` (see :class:`StoreConnection`), new
    connections by ``redis_connect_timeout_s``; redis-py retries nothing by itself.
    """
    url = settings.redis_url
    timeouts: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_connect_timeout_s,
    }
    if url.startswith(CLUSTER_SCHEME):
        cluster = RedisCluster.from_url(
            "redis://" + url[len(CLUSTER_SCHEME) :],
            max_connections=settings.redis_max_connections,
            connection_class=StoreConnection,
            **timeouts,
        )
        # RedisCluster speaks the same command API; typing it as Redis keeps callers simple.
        return cluster  # type: ignore[return-value]
    # A blocking pool: a burst (thousands of GPS streams reconnecting at once) waits briefly
    # for a connection instead of failing calls with "too many connections".
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_wait_s,
        connection_class=StoreConnection,
        **timeouts,
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
