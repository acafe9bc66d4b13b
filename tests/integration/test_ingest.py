"""The batcher against a real Redis: a slow stored-fix hook (arrival detection) holds up no tick,
and its backlog is bounded."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest

from location_svc.domain.fixes import Fix
from location_svc.domain.presence import DriverStatus
from location_svc.ingest import AckSink, Ingest, Update
from location_svc.store.driver_index import DriverIndex
from location_svc.store.drivers import DriverStore, driver_key, position_key
from location_svc.store.geo_index import shard_of
from location_svc.store.history import HistoryWriter
from mesh.stores import Stores

SPOT = (48.8566, 2.3522)


def _update(driver_id: str, sequence: int, sink: AckSink) -> Update:
    fix = Fix(SPOT[0], SPOT[1], 5.0, 0.0, 0.0, 1_700_000_000_000 + sequence, sequence)
    shard = shard_of(*SPOT)
    # Offline: stored and published like any live fix, but not indexed (no index keys to clean).
    return Update(
        driver_id, fix, DriverStatus.OFFLINE, "car", "", "", fix.device_time_ms, sink, shard, ""
    )


async def test_a_slow_stored_hook_holds_up_no_tick(stores: Stores) -> None:
    gate, entered = asyncio.Event(), asyncio.Event()
    handed: list[str] = []
    calls = 0

    async def hook(updates: list[Update]) -> None:
        nonlocal calls
        calls += 1
        handed.extend(u.driver_id for u in updates)
        entered.set()
        await gate.wait()

    assert stores.redis is not None and stores.pool is not None
    redis, pool = stores.redis, stores.pool
    tag = uuid.uuid4().hex[:8]
    drivers = [f"ingest-{tag}-{i}" for i in range(4)]
    ingest = Ingest(
        redis,
        DriverIndex(redis, prefix=f"t{tag}"),
        DriverStore(redis, pool),
        HistoryWriter(pool),
        on_stored=hook,
    )
    running = asyncio.create_task(ingest.run())
    # A sink is one driver's stream.
    sinks = [AckSink() for _ in drivers]
    try:
        await ingest.submit(_update(drivers[0], 1, sinks[0]))
        await entered.wait()
        # The hook now blocks on the gate; later fixes are stored and acked all the same, each
        # in a tick of its own (awaiting the hook inside a tick would hang here).
        for i, driver in enumerate(drivers[1:], start=2):
            await ingest.submit(_update(driver, i, sinks[i - 1]))
        assert [(s.flushed, s.acked_sequence) for s in sinks] == [(1, i) for i in range(1, 5)]
        assert ingest.stats.ticks == len(drivers)
        for driver in drivers:
            assert await redis.exists(driver_key(driver)) == 1
        assert handed == drivers[:1]
        # Released, the hook gets the rest in order, in one call, before run() returns.
        gate.set()
        ingest.stop()
        await running
        assert handed == drivers
        assert calls == 2
    finally:
        gate.set()
        ingest.stop()
        await running
        await redis.delete(*(driver_key(d) for d in drivers))
        await redis.hdel(position_key(shard_of(*SPOT)), *drivers)  # type: ignore[misc]


async def test_a_status_change_between_two_fixes_of_one_tick_leaves_the_index_right(
    stores: Stores,
) -> None:
    """Filed as available by the first fix, off the index by the second (the courier went
    offline in between), in one pipeline: the driver ends up off the index."""
    assert stores.redis is not None and stores.pool is not None
    redis, pool = stores.redis, stores.pool
    tag = uuid.uuid4().hex[:8]
    index = DriverIndex(redis, prefix=f"t{tag}")
    ingest = Ingest(redis, index, DriverStore(redis, pool), HistoryWriter(pool))
    driver = f"ingest-{tag}"
    shard = shard_of(*SPOT)
    now = int(time.time() * 1000)
    first = Fix(SPOT[0], SPOT[1], 5.0, 0.0, 0.0, now - 1_000, 1)
    second = Fix(SPOT[0], SPOT[1], 5.0, 0.0, 0.0, now, 2)
    try:
        # Both fixes submitted before the tick runs: one pipeline carries them.
        ingest.submit(
            Update(driver, first, DriverStatus.AVAILABLE, "car", "", shard, now, None, shard, "")
        )
        done = ingest.submit(
            Update(driver, second, DriverStatus.OFFLINE, "car", shard, "", now, None, shard, shard)
        )
        await ingest.flush()
        await done
        assert await index.find_nearby(*SPOT, 1_000, 5, include_busy=True) == []
        # And the plain case still files: one available fix, found.
        third = Fix(SPOT[0], SPOT[1], 5.0, 0.0, 0.0, now + 1, 3)
        ingest.submit(
            Update(driver, third, DriverStatus.AVAILABLE, "car", "", shard, now, None, shard, shard)
        )
        await ingest.flush()
        assert [n.driver_id for n in await index.find_nearby(*SPOT, 1_000, 5)] == [driver]
    finally:
        pipe = redis.pipeline(transaction=False)
        index.queue_remove(pipe, driver, shard)
        await pipe.execute()
        await redis.delete(driver_key(driver))
        await redis.hdel(position_key(shard), driver)  # type: ignore[misc]


async def test_a_hook_too_far_behind_loses_the_oldest_stored_fixes_counted_and_logged(
    stores: Stores, caplog: pytest.LogCaptureFixture
) -> None:
    """The arrival hook's backlog is bounded: past ``max_hook_backlog`` the oldest stored fixes
    are dropped (counted in the stats, a warning logged) and the newest reach the hook."""
    caplog.set_level(logging.WARNING, logger="location_svc.ingest")
    gate, entered = asyncio.Event(), asyncio.Event()
    handed: list[list[int]] = []

    async def hook(updates: list[Update]) -> None:
        handed.append([u.fix.sequence for u in updates])
        entered.set()
        await gate.wait()

    assert stores.redis is not None and stores.pool is not None
    redis, pool = stores.redis, stores.pool
    tag = uuid.uuid4().hex[:8]
    driver = f"ingest-{tag}"
    ingest = Ingest(
        redis,
        DriverIndex(redis, prefix=f"t{tag}"),
        DriverStore(redis, pool),
        HistoryWriter(pool),
        on_stored=hook,
        max_hook_backlog=3,
    )
    running = asyncio.create_task(ingest.run())
    sink = AckSink()
    try:
        await ingest.submit(_update(driver, 1, sink))
        await entered.wait()
        # The hook is held on fix 1; five more are stored, a tick each, two past the bound.
        for sequence in range(2, 7):
            await ingest.submit(_update(driver, sequence, sink))
        assert sink.acked_sequence == 6
        assert ingest.stats.hook_dropped == 2
        warnings = [r.getMessage() for r in caplog.records if r.name == "location_svc.ingest"]
        # The first overflow is logged (later ones within ten seconds are only counted).
        assert warnings[:1] == [
            "the stored-fix hook fell behind; 1 fixes dropped unseen (1 so far)"
        ], warnings
        gate.set()
        ingest.stop()
        await running
        # Fixes 2 and 3 never reach the hook; the newest three do, in order, in one call.
        assert handed == [[1], [4, 5, 6]]
    finally:
        gate.set()
        ingest.stop()
        await running
        await redis.delete(driver_key(driver))
        await redis.hdel(position_key(shard_of(*SPOT)), driver)  # type: ignore[misc]
