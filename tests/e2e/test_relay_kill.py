"""A relay killed after publishing a batch but before marking it loses nothing: it is republished.

The kill point is made deterministic from the outside. The test holds ``LOCK TABLE outbox IN
SHARE MODE``: SHARE does not conflict with the ROW SHARE lock of the relay's ``SELECT ... FOR
UPDATE``, so the relay claims its batch and publishes it to Redis, but it conflicts with the
ROW EXCLUSIVE lock its ``UPDATE ... SET published_at`` needs, so the relay then waits, holding
an uncommitted transaction. That is where the test kills it.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from redis.asyncio import Redis

from mesh.events import Event, EventConsumer, ensure_group, stream_for
from mesh.settings import StoreSettings
from mesh.stores import Stores
from mesh.testing import spawn
from order_svc.store.outbox import OutboxEvent, append_events

EVENTS = 50


async def _until(
    condition: Callable[[], bool | Awaitable[bool]],
    process: asyncio.subprocess.Process | None = None,
) -> None:
    """Polls ``condition`` (while ``process`` lives); the per-test timeout bounds the wait."""
    while True:
        result = condition()
        if await result if inspect.isawaitable(result) else result:
            return
        if process is not None and process.returncode is not None:
            raise AssertionError(f"the relay exited early with {process.returncode}")
        await asyncio.sleep(0.02)


async def _relay_backend_waiting_on_lock(conn: asyncpg.Connection) -> int | None:
    """The pid of the relay's backend if its UPDATE waits for the outbox's ROW EXCLUSIVE lock."""
    pid = await conn.fetchval(
        "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE a.datname = current_database() AND a.wait_event_type = 'Lock'"
        " AND a.query LIKE '%UPDATE outbox SET published_at%'"
        " AND l.relation = 'outbox'::regclass AND l.mode = 'RowExclusiveLock' AND NOT l.granted"
    )
    return pid if isinstance(pid, int) else None


async def _spawn_relay(store_settings: StoreSettings) -> asyncio.subprocess.Process:
    process, _ = await spawn(
        [sys.executable, "-m", "order_svc.relay"],
        {
            "DELIVERY_DATABASE_URL": store_settings.database_url,
            "DELIVERY_REDIS_URL": store_settings.redis_url,
            # Rows other tests of this run left unpublished must not push ours out of the batch.
            "DELIVERY_RELAY_BATCH_SIZE": "100000",
        },
    )
    return process


async def test_a_relay_killed_after_publishing_but_before_marking_loses_no_event(
    store_settings: StoreSettings, stores: Stores
) -> None:
    assert stores.pool is not None and stores.redis is not None
    redis: Redis = stores.redis
    aggregate_type = f"test_{uuid.uuid4().hex[:12]}"
    stream, group = stream_for(aggregate_type), "relay-kill"
    # The group exists before anything is published, like a service subscribed in advance.
    await ensure_group(redis, stream, group)
    async with stores.pool.acquire() as conn, conn.transaction():
        ids = await append_events(
            conn,
            [
                OutboxEvent(
                    aggregate_type=aggregate_type,
                    aggregate_id=str(uuid.uuid4()),
                    event_type="order.created",
                    payload=f"event {n}".encode(),
                )
                for n in range(EVENTS)
            ],
        )

    async def unpublished() -> int:
        assert stores.pool is not None
        count = await stores.pool.fetchval(
            "SELECT count(*) FROM outbox WHERE id = ANY($1) AND published_at IS NULL", ids
        )
        assert isinstance(count, int)
        return count

    blocker = await asyncpg.connect(store_settings.database_url)
    relay = None
    try:
        lock = blocker.transaction()
        await lock.start()
        await blocker.execute("LOCK TABLE outbox IN SHARE MODE")
        relay = await _spawn_relay(store_settings)

        async def published_but_not_marked() -> bool:
            return (
                await redis.xlen(stream) == EVENTS
                and await _relay_backend_waiting_on_lock(blocker) is not None
            )

        await _until(published_but_not_marked, relay)
        backend = await _relay_backend_waiting_on_lock(blocker)
        assert backend is not None
        # Its SELECT ... FOR UPDATE got ROW SHARE next to our SHARE lock: the batch is claimed.
        held = await blocker.fetchval(
            "SELECT count(*) FROM pg_locks WHERE pid = $1 AND relation = 'outbox'::regclass"
            " AND mode = 'RowShareLock' AND granted",
            backend,
        )
        assert held == 1
        relay.kill()
        await relay.wait()
        await lock.rollback()

        # The killed relay's backend finds its client gone once its UPDATE gets the lock, and
        # aborts the transaction: the rows it published were never marked.
        async def backend_gone() -> bool:
            alive = await blocker.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", backend
            )
            return alive == 0

        await _until(backend_gone)
        assert await unpublished() == EVENTS
        assert await redis.xlen(stream) == EVENTS

        relay = await _spawn_relay(store_settings)

        async def all_marked() -> bool:
            return await unpublished() == 0

        await _until(all_marked, relay)
        relay.send_signal(signal.SIGTERM)
        assert await relay.wait() == 0
    finally:
        await blocker.close()
        if relay is not None and relay.returncode is None:
            relay.kill()
            await relay.wait()

    # Every event was published twice: once by the killed relay, once by its successor.
    entries: list[tuple[Any, Any]] = await redis.xrange(stream) or []
    published = [int(fields[b"event_id"]) for _, fields in entries]
    assert sorted(published) == sorted(ids * 2)

    handled: list[int] = []

    async def handle(event: Event) -> None:
        handled.append(int(event.event_id))

    consumer = EventConsumer(redis, stream, group, "c1", handle, block_s=0.05)
    task = asyncio.create_task(consumer.run())
    try:
        await _until(lambda: consumer.handled + consumer.duplicates == len(entries))
    finally:
        consumer.stop()
        await task
    # At least once reached the group; the dedupe made each event reach the handler once.
    assert set(handled) == set(ids)
    assert handled == ids
    assert consumer.duplicates == EVENTS
    assert (await redis.xpending(stream, group))["pending"] == 0
