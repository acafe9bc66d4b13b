"""The geo index against a real Redis and a real Redis Cluster: exact, fresh, and tidy.

Every test writes under a key prefix of its own, so runs sharing the single Redis never see
each other's drivers (nor sweep them).
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from location_svc.store.driver_index import BUSY, DriverIndex
from location_svc.store.geo_index import (
    DEFAULT_STEPS_M,
    GEO_LAT_MAX,
    GEO_SETS,
    VEHICLES,
    GeoIndex,
    IndexEntry,
    Nearby,
    geo_key,
    polar_key,
    seen_key,
    shard_of,
    shards_key,
)
from mesh.geo import haversine_m
from mesh.settings import StoreSettings
from mesh.stores import make_redis
from tests.unit.test_geo_index_math import destination, edge_point

TTL_S = 30.0


@dataclass
class Scratch:
    """An index under a fresh prefix, with what a test needs to inspect it."""

    redis: Redis
    prefix: str
    index: GeoIndex

    async def put(self, *entries: IndexEntry, previous: str | None = None) -> list[str]:
        pipe = self.redis.pipeline(transaction=False)
        shards = [self.index.queue_upsert(pipe, e, previous) for e in entries]
        await pipe.execute()
        return shards

    async def remove(self, driver_id: str, shard: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        self.index.queue_remove(pipe, driver_id, shard)
        await pipe.execute()

    async def holders(self, driver_id: str, shard: str) -> list[str]:
        """Which of the shard's keys still hold the driver."""
        found = []
        for name in GEO_SETS:
            key = geo_key(shard, name, self.prefix)
            if await self.redis.zscore(key, driver_id) is not None:
                found.append(key)
        for vehicle in VEHICLES:
            key = polar_key(shard, vehicle, self.prefix)
            if await self.redis.hexists(key, driver_id):  # type: ignore[misc]
                found.append(key)
        if await self.redis.zscore(seen_key(shard, self.prefix), driver_id) is not None:
            found.append(seen_key(shard, self.prefix))
        return found

    async def stored_position(self, entry: IndexEntry) -> tuple[float, float]:
        """Where Redis keeps the driver: GEO sets round to a 52-bit geohash, polar hashes not."""
        if abs(entry.lat) > GEO_LAT_MAX:
            return entry.lat, entry.lng
        key = geo_key(shard_of(entry.lat, entry.lng), entry.vehicle, self.prefix)
        [position] = await self.redis.geopos(key, entry.driver_id)
        assert position is not None, entry
        lng, lat = position
        return float(lat), float(lng)

    async def drop(self) -> None:
        shards = await self.redis.smembers(shards_key(self.prefix))  # type: ignore[misc]
        for raw in shards:
            shard = raw.decode() if isinstance(raw, bytes) else str(raw)
            # One DEL per key: in a cluster a DEL may not span slots, and these share one.
            keys = [seen_key(shard, self.prefix)]
            keys += [geo_key(shard, v, self.prefix) for v in GEO_SETS]
            keys += [polar_key(shard, v, self.prefix) for v in VEHICLES]
            await self.redis.delete(*keys)
        await self.redis.delete(shards_key(self.prefix))


@pytest.fixture
async def scratch(any_redis: Redis) -> AsyncIterator[Scratch]:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    made = Scratch(any_redis, prefix, GeoIndex(any_redis, presence_ttl_s=TTL_S, prefix=prefix))
    try:
        yield made
    finally:
        await made.drop()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def brute_force(
    drivers: Sequence[tuple[str, float, float, str]],
    lat: float,
    lng: float,
    radius_m: float,
    limit: int,
    vehicle: str | None,
) -> list[tuple[float, str]]:
    """The k nearest by measuring every driver: ``(distance, id)``, nearest first."""
    within = [
        (haversine_m(lat, lng, dlat, dlng), driver)
        for driver, dlat, dlng, dvehicle in drivers
        if vehicle is None or dvehicle == vehicle
    ]
    return sorted(x for x in within if x[0] <= radius_m)[:limit]


def assert_same(got: list[Nearby], want: list[tuple[float, str]], context: object) -> None:
    """Equal distances in order; equal drivers except where distances tie at the cut."""
    assert len(got) == len(want), context
    for nearby, (distance, _) in zip(got, want, strict=True):
        assert abs(nearby.distance_m - distance) <= 1e-6, context
    if want:
        cut = want[-1][0] - 1e-6
        assert {n.driver_id for n in got if n.distance_m < cut} == {
            d for x, d in want if x < cut
        }, context
    assert [n.distance_m for n in got] == sorted(n.distance_m for n in got), context


def scenario_centre(rnd: random.Random, kind: str) -> tuple[float, float]:
    if kind == "city":
        return rnd.uniform(-60, 60), rnd.uniform(-180, 180)
    if kind == "edge":
        return edge_point(rnd, rnd.uniform(-70, 70), rnd.uniform(-180, 180))
    if kind == "antimeridian":
        return rnd.uniform(-70, 70), rnd.choice([-1, 1]) * rnd.uniform(179.9, 180.0)
    if kind == "pole":
        return rnd.choice([-1, 1]) * rnd.uniform(84.8, 90.0), rnd.uniform(-180, 180)
    # Right at the latitude where Redis GEO stops: drivers on both sides of it.
    return rnd.choice([-1, 1]) * rnd.uniform(GEO_LAT_MAX - 0.05, GEO_LAT_MAX + 0.05), (
        rnd.uniform(-180, 180)
    )


KINDS = ("city", "edge", "antimeridian", "pole", "geo-limit")


async def test_find_nearby_equals_brute_force(any_redis: Redis) -> None:
    """Random scenarios near cell edges, the antimeridian, the poles and the GEO limit."""
    for seed in range(50):
        rnd = random.Random(seed)
        kind = KINDS[seed % len(KINDS)]
        prefix = f"t{uuid.uuid4().hex[:10]}"
        # Small steps on some seeds so that several steps (and their stopping rule) run.
        steps = [DEFAULT_STEPS_M, (500.0, 1000.0, 2000.0, 5000.0), (50.0, 120.0, 400.0)][seed % 3]
        scratch = Scratch(
            any_redis,
            prefix,
            GeoIndex(any_redis, presence_ttl_s=TTL_S, steps_m=steps, prefix=prefix),
        )
        try:
            await _check_scenario(scratch, rnd, kind, seed)
        finally:
            await scratch.drop()


async def _check_scenario(scratch: Scratch, rnd: random.Random, kind: str, seed: int) -> None:
    clat, clng = scenario_centre(rnd, kind)
    spread = rnd.choice([300.0, 2_000.0, 15_000.0])
    now = now_ms()
    entries: dict[str, IndexEntry] = {}
    shard_by_driver: dict[str, str] = {}
    gone: set[str] = set()
    stale: set[str] = set()
    for i in range(rnd.randrange(0, 90)):
        driver = f"d{i}"
        dlat, dlng = destination(
            clat, clng, spread * math.sqrt(rnd.random()), rnd.uniform(0, 2 * math.pi)
        )
        fix = now - rnd.randrange(0, 20_000)
        if rnd.random() < 0.12:
            fix = now - rnd.randrange(31_000, 120_000)
            stale.add(driver)
        entry = IndexEntry(driver, dlat, dlng, rnd.choice(VEHICLES), fix)
        if rnd.random() < 0.2:
            # First somewhere else, then here: the move must leave nothing behind.
            olat, olng = destination(dlat, dlng, rnd.uniform(0, 20_000), rnd.uniform(0, 6.3))
            [old] = await scratch.put(IndexEntry(driver, olat, olng, entry.vehicle, fix - 1000))
            [shard] = await scratch.put(entry, previous=old)
        else:
            [shard] = await scratch.put(entry)
        entries[driver] = entry
        shard_by_driver[driver] = shard
        if rnd.random() < 0.1:
            await scratch.remove(driver, shard)
            gone.add(driver)
    live = []
    for driver, entry in entries.items():
        if driver in gone or driver in stale:
            continue
        lat, lng = await scratch.stored_position(entry)
        live.append((driver, lat, lng, entry.vehicle))
    for q in range(5):
        qlat, qlng = destination(
            clat, clng, spread * rnd.random() * 0.7, rnd.uniform(0, 2 * math.pi)
        )
        radius = rnd.choice([0.0, 25.0, 300.0, 1_000.0, 5_000.0, 20_000.0, 40_000.0])
        limit = rnd.randint(1, 15)
        vehicle = rnd.choice([None, None, *VEHICLES])
        got = await scratch.index.find_nearby(qlat, qlng, radius, limit, vehicle, now_ms=now)
        want = brute_force(live, qlat, qlng, radius, limit, vehicle)
        context = (seed, kind, q, qlat, qlng, radius, limit, vehicle)
        assert_same(got, want, context)
        for nearby in got:
            assert nearby.vehicle == entries[nearby.driver_id].vehicle
            assert nearby.fix_time_ms == entries[nearby.driver_id].fix_time_ms


async def test_vehicle_filter(scratch: Scratch) -> None:
    lat, lng = 48.8566, 2.3522
    vehicles = ["car", "van", "bicycle", "van", "motorcycle", "car", "van"]
    entries = [
        IndexEntry(f"v{i}", *destination(lat, lng, 100.0 * (i + 1), 1.0), vehicle, now_ms())
        for i, vehicle in enumerate(vehicles)
    ]
    await scratch.put(*entries)
    vans = await scratch.index.find_nearby(lat, lng, 5_000, 10, "van")
    assert [n.driver_id for n in vans] == ["v1", "v3", "v6"]
    assert {n.vehicle for n in vans} == {"van"}
    everyone = await scratch.index.find_nearby(lat, lng, 5_000, 10)
    assert [n.driver_id for n in everyone] == [f"v{i}" for i in range(7)]
    with pytest.raises(ValueError):
        await scratch.index.find_nearby(lat, lng, 5_000, 10, "rocket")


async def test_nearest_first_within_radius_and_limit(scratch: Scratch) -> None:
    lat, lng = -33.8688, 151.2093
    await scratch.put(
        *(
            IndexEntry(f"r{i}", *destination(lat, lng, 100.0 * i, 2.0 + i), "car", now_ms())
            for i in range(1, 8)
        )
    )
    three = await scratch.index.find_nearby(lat, lng, 5_000, 3)
    assert [n.driver_id for n in three] == ["r1", "r2", "r3"]
    assert [round(n.distance_m) for n in three] == [100, 200, 300]
    within = await scratch.index.find_nearby(lat, lng, 250, 10)
    assert [n.driver_id for n in within] == ["r1", "r2"]
    assert await scratch.index.find_nearby(lat, lng, 50, 10) == []
    assert await scratch.index.find_nearby(lat, lng, 5_000, 0) == []


async def test_busy_or_offline_drivers_leave_the_index(scratch: Scratch) -> None:
    lat, lng = 40.4168, -3.7038
    [shard] = await scratch.put(IndexEntry("busy", lat, lng, "motorcycle", now_ms()))
    assert [n.driver_id for n in await scratch.index.find_nearby(lat, lng, 1_000, 5)] == ["busy"]
    await scratch.remove("busy", shard)
    assert await scratch.index.find_nearby(lat, lng, 1_000, 5) == []
    assert await scratch.holders("busy", shard) == []


async def test_stale_driver_disappears_before_the_sweep_and_the_sweep_removes_it(
    scratch: Scratch,
) -> None:
    lat, lng = 35.6762, 139.6503
    now = now_ms()
    [shard, _] = await scratch.put(
        IndexEntry("silent", lat, lng, "car", now - int(TTL_S * 1000) - 1),
        IndexEntry("talking", *destination(lat, lng, 300, 0.5), "car", now),
    )
    found = await scratch.index.find_nearby(lat, lng, 2_000, 5, now_ms=now)
    assert [n.driver_id for n in found] == ["talking"]
    # Not swept yet: still in the keys, only filtered out.
    assert await scratch.holders("silent", shard)
    assert await scratch.index.sweep(now) == 1
    assert await scratch.holders("silent", shard) == []
    assert await scratch.holders("talking", shard_of(*destination(lat, lng, 300, 0.5)))
    assert await scratch.index.sweep(now) == 0


async def test_stale_drivers_crowding_the_nearest_places_do_not_hide_fresh_ones(
    scratch: Scratch,
) -> None:
    lat, lng = 51.5072, -0.1276
    now = now_ms()
    stale = [
        IndexEntry(f"s{i}", *destination(lat, lng, 5.0 * i + 1, i), "car", now - 60_000)
        for i in range(40)
    ]
    fresh = [
        IndexEntry(f"f{i}", *destination(lat, lng, 400.0 + 10 * i, i), "car", now) for i in range(5)
    ]
    await scratch.put(*stale, *fresh)
    found = await scratch.index.find_nearby(lat, lng, 5_000, 3, "car", now_ms=now)
    assert [n.driver_id for n in found] == ["f0", "f1", "f2"]


async def test_moving_across_a_shard_boundary_leaves_no_copy(scratch: Scratch) -> None:
    rnd = random.Random(11)
    lat, lng = edge_point(rnd, 52.52, 13.405)
    before = destination(lat, lng, 30, rnd.uniform(0, 6.3))
    after = destination(lat, lng, 30, rnd.uniform(0, 6.3))
    while shard_of(*after) == shard_of(*before):
        after = destination(lat, lng, 30, rnd.uniform(0, 6.3))
    [old] = await scratch.put(IndexEntry("mover", *before, "van", now_ms()))
    [new] = await scratch.put(IndexEntry("mover", *after, "van", now_ms()), previous=old)
    assert old != new
    assert await scratch.holders("mover", old) == []
    # Its van set, the any set and presence.
    assert sorted(await scratch.holders("mover", new)) == sorted(
        [
            geo_key(new, "van", scratch.prefix),
            geo_key(new, "any", scratch.prefix),
            seen_key(new, scratch.prefix),
        ]
    )
    found = await scratch.index.find_nearby(lat, lng, 500, 10)
    assert [n.driver_id for n in found] == ["mover"]
    assert haversine_m(found[0].lat, found[0].lng, *after) < 1.0


async def test_changing_vehicle_leaves_the_old_vehicles_set(scratch: Scratch) -> None:
    lat, lng = 19.4326, -99.1332
    [shard] = await scratch.put(IndexEntry("swap", lat, lng, "bicycle", now_ms()))
    pipe = scratch.redis.pipeline(transaction=False)
    scratch.index.queue_upsert(
        pipe, IndexEntry("swap", lat, lng, "car", now_ms()), shard, previous_vehicle="bicycle"
    )
    await pipe.execute()
    assert await scratch.index.find_nearby(lat, lng, 100, 5, "bicycle") == []
    assert [n.vehicle for n in await scratch.index.find_nearby(lat, lng, 100, 5)] == ["car"]


async def test_polar_drivers_are_found_and_cross_the_geo_limit_cleanly(scratch: Scratch) -> None:
    now = now_ms()
    await scratch.put(
        IndexEntry("north", 89.99, 10.0, "car", now),
        IndexEntry("pole", 90.0, 0.0, "van", now),
        IndexEntry("south", -89.5, -170.0, "bicycle", now),
    )
    found = await scratch.index.find_nearby(89.995, -170.0, 5_000, 5)
    assert [n.driver_id for n in found] == ["pole", "north"]
    assert [n.driver_id for n in await scratch.index.find_nearby(-90.0, 0.0, 60_000, 5)] == [
        "south"
    ]
    # Over the limit and back, within one shard: exactly one copy at any time.
    lng = 33.0
    [above] = await scratch.put(IndexEntry("crosser", GEO_LAT_MAX + 0.0001, lng, "car", now))
    [below] = await scratch.put(
        IndexEntry("crosser", GEO_LAT_MAX - 0.0001, lng, "car", now), previous=above
    )
    hits = await scratch.index.find_nearby(GEO_LAT_MAX, lng, 1_000, 5)
    assert [n.driver_id for n in hits] == ["crosser"]
    assert len(await scratch.holders("crosser", below)) == 3  # car, any, presence


async def test_a_driver_caught_in_two_shards_is_reported_once(
    scratch: Scratch,
) -> None:
    rnd = random.Random(5)
    lat, lng = edge_point(rnd, 41.9028, 12.4964)
    here = destination(lat, lng, 20, rnd.uniform(0, 6.3))
    there = destination(lat, lng, 20, rnd.uniform(0, 6.3))
    while shard_of(*there) == shard_of(*here):
        there = destination(lat, lng, 20, rnd.uniform(0, 6.3))
    now = now_ms()
    # As a reader may see it between a move's removal and addition landing on two nodes.
    await scratch.put(IndexEntry("twice", *here, "car", now - 1000))
    await scratch.put(IndexEntry("twice", *there, "car", now))
    await scratch.put(IndexEntry("other", *destination(lat, lng, 200, 1.0), "car", now))
    found = await scratch.index.find_nearby(lat, lng, 1_000, 1)
    assert [n.driver_id for n in found] == ["twice"]
    # Once both copies are among the candidates, the latest fix wins.
    found = await scratch.index.find_nearby(lat, lng, 1_000, 5)
    assert [n.driver_id for n in found] == ["twice", "other"]
    assert found[0].fix_time_ms == now


async def test_searches_and_sweeps_survive_a_server_that_forgot_the_scripts(
    redis_cluster_url: str,
) -> None:
    """After a restart or failover Redis has no scripts cached: EVAL loads them again.

    Run on the test cluster only: SCRIPT FLUSH on the shared single Redis would disturb
    other runs.
    """
    any_redis = make_redis(StoreSettings(redis_url=redis_cluster_url))
    prefix = f"t{uuid.uuid4().hex[:10]}"
    scratch = Scratch(any_redis, prefix, GeoIndex(any_redis, presence_ttl_s=TTL_S, prefix=prefix))
    try:
        lat, lng = 59.3293, 18.0686
        await scratch.put(IndexEntry("kept", lat, lng, "car", now_ms()))
        assert len(await scratch.index.find_nearby(lat, lng, 100, 1)) == 1
        await any_redis.script_flush()
        assert len(await scratch.index.find_nearby(lat, lng, 100, 1)) == 1
        await any_redis.script_flush()
        assert await scratch.index.sweep() == 0
    finally:
        await scratch.drop()
        await any_redis.aclose()


async def test_busy_couriers_are_found_only_when_asked_for_and_the_merge_is_exact(
    any_redis: Redis,
) -> None:
    """Available and busy couriers side by side: a plain search sees the available ones, a
    search including busy ones equals brute force over both; a courier moving between the two
    (by status) is in one place only."""
    for seed in range(12):
        rnd = random.Random(1000 + seed)
        prefix = f"t{uuid.uuid4().hex[:10]}"
        index = DriverIndex(any_redis, presence_ttl_s=TTL_S, prefix=prefix)
        halves = [
            Scratch(any_redis, prefix, index.available),
            Scratch(any_redis, prefix + "busy", index.busy),
        ]
        try:
            clat, clng = scenario_centre(rnd, KINDS[seed % 2])
            now = now_ms()
            slots: dict[str, str] = {}
            entries: dict[str, IndexEntry] = {}
            for i in range(rnd.randrange(5, 60)):
                driver = f"d{i}"
                dlat, dlng = destination(clat, clng, 3_000 * rnd.random(), rnd.uniform(0, 6.3))
                entry = IndexEntry(driver, dlat, dlng, rnd.choice(VEHICLES), now - i)
                busy = rnd.random() < 0.4
                pipe = any_redis.pipeline(transaction=False)
                slots[driver] = index.queue_upsert(pipe, entry, None, busy=busy)
                if rnd.random() < 0.3:
                    # The status flips: the courier leaves the other index in the same pipeline.
                    busy = not busy
                    slots[driver] = index.queue_upsert(pipe, entry, slots[driver], busy=busy)
                await pipe.execute()
                entries[driver] = entry
            live: dict[bool, list[tuple[str, float, float, str]]] = {False: [], True: []}
            for driver, entry in entries.items():
                busy = slots[driver].startswith(BUSY)
                lat, lng = await halves[busy].stored_position(entry)
                live[busy].append((driver, lat, lng, entry.vehicle))
            for _ in range(4):
                qlat, qlng = destination(clat, clng, 1_500 * rnd.random(), rnd.uniform(0, 6.3))
                radius = rnd.choice([300.0, 1_000.0, 5_000.0])
                limit = rnd.randint(1, 15)
                vehicle = rnd.choice([None, *VEHICLES])
                context = (seed, qlat, qlng, radius, limit, vehicle)
                plain = await index.find_nearby(qlat, qlng, radius, limit, vehicle, now_ms=now)
                assert_same(
                    plain, brute_force(live[False], qlat, qlng, radius, limit, vehicle), context
                )
                assert not any(n.busy for n in plain)
                both = await index.find_nearby(
                    qlat, qlng, radius, limit, vehicle, include_busy=True, now_ms=now
                )
                want = brute_force(live[False] + live[True], qlat, qlng, radius, limit, vehicle)
                assert_same(both, want, context)
                for n in both:
                    assert n.busy == slots[n.driver_id].startswith(BUSY), context
        finally:
            for half in halves:
                await half.drop()
