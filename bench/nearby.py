"""Nearby search at the store: GeoIndex.find_nearby against a plain GEOSEARCH on the same data.

Loads N available drivers uniformly into a box around Berlin (40 km x 40 km by default), both
into the sharded index and into one plain GEO key, then asks both for "the 10 nearest within
5 km" at random points of the box, one query at a time, alternating so that machine noise hits
both alike. Prints p50/p99 of each and the ratio of the p99s (target: index >= 15x faster).

Everything goes to a scratch Redis database (db 9 by default), flushed before and after; the
script refuses db 0.

    .venv/bin/python bench/nearby.py [--drivers 100000] [--queries 5000] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import sys
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from location_svc.store.geo_index import VEHICLES, GeoIndex, IndexEntry
from mesh.geo import EARTH_RADIUS_M, haversine_m
from mesh.settings import StoreSettings
from mesh.stores import make_redis

DEFAULT_REDIS = "redis://127.0.0.1:6379/9"
BERLIN = (52.52, 13.405)
PLAIN_KEY = "bench:nearby:plain"
#: How the vehicles of the loaded drivers are mixed (cars most common, vans rarest).
VEHICLE_WEIGHTS = {"bicycle": 0.25, "motorcycle": 0.25, "car": 0.4, "van": 0.1}


def box_point(
    rnd: random.Random, centre: tuple[float, float], side_km: float
) -> tuple[float, float]:
    """A uniformly random point of the ``side_km`` square centred on ``centre``."""
    half = side_km * 500.0
    dlat = math.degrees(half / EARTH_RADIUS_M)
    dlng = math.degrees(half / (EARTH_RADIUS_M * math.cos(math.radians(centre[0]))))
    return centre[0] + rnd.uniform(-dlat, dlat), centre[1] + rnd.uniform(-dlng, dlng)


async def load_drivers(
    redis: Redis,
    n: int,
    *,
    index: GeoIndex | None = None,
    centre: tuple[float, float] = BERLIN,
    side_km: float = 40.0,
    seed: int = 1,
    fix_time_ms: int | None = None,
    plain_key: str | None = None,
    batch: int = 5000,
) -> list[IndexEntry]:
    """Files ``n`` available drivers uniformly in a square around ``centre``; returns them.

    Drivers are ``bench-<i>`` with vehicles mixed by :data:`VEHICLE_WEIGHTS` and a fix time of
    ``fix_time_ms`` (now by default, so they are fresh for one presence TTL). With
    ``plain_key`` they also go into that one GEO key, the baseline a plain search runs on.
    """
    index = index or GeoIndex(redis)
    rnd = random.Random(seed)
    now_ms = fix_time_ms if fix_time_ms is not None else time.time_ns() // 1_000_000
    vehicles = list(VEHICLE_WEIGHTS)
    weights = list(VEHICLE_WEIGHTS.values())
    entries = []
    for i in range(n):
        lat, lng = box_point(rnd, centre, side_km)
        vehicle = rnd.choices(vehicles, weights)[0]
        entries.append(IndexEntry(f"bench-{i}", lat, lng, vehicle, now_ms))
    for start in range(0, n, batch):
        pipe = redis.pipeline(transaction=False)
        for entry in entries[start : start + batch]:
            index.queue_upsert(pipe, entry, None)
            if plain_key is not None:
                pipe.geoadd(plain_key, (entry.lng, entry.lat, entry.driver_id))
        await pipe.execute()
    return entries


def quantile(samples: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``samples``, nearest rank."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def report(name: str, samples_s: Sequence[float]) -> tuple[float, float]:
    """Prints p50/p99 in ms and returns them."""
    p50, p99 = quantile(samples_s, 0.5) * 1000, quantile(samples_s, 0.99) * 1000
    print(f"  {name:<44} p50 {p50:7.3f} ms   p99 {p99:7.3f} ms")
    return p50, p99


async def run(args: argparse.Namespace) -> None:
    db = urllib.parse.urlparse(args.redis_url).path.strip("/") or "0"
    if db == "0":
        raise SystemExit("refusing to use Redis db 0: the bench flushes its database")
    # The client the service itself uses (its connection class and pool), so the figures
    # are the service's own.
    redis = make_redis(StoreSettings(redis_url=args.redis_url))
    try:
        await redis.flushdb()
        index = GeoIndex(redis, presence_ttl_s=3600)
        started = time.perf_counter()
        entries = await load_drivers(
            redis, args.drivers, index=index, seed=args.seed, plain_key=PLAIN_KEY
        )
        shards = await redis.scard("loc:shards")
        print(
            f"loaded {len(entries)} drivers into {shards} shards and one plain key "
            f"in {time.perf_counter() - started:.1f} s"
        )
        rnd = random.Random(args.seed + 1)
        points = [box_point(rnd, BERLIN, args.side_km) for _ in range(args.queries)]
        radius, limit = args.radius_m, args.limit

        async def plain(lat: float, lng: float) -> list[bytes]:
            return list(
                await redis.execute_command(
                    "GEOSEARCH", PLAIN_KEY, "FROMLONLAT", lng, lat,
                    "BYRADIUS", radius, "m", "ASC", "COUNT", limit,
                )
            )  # fmt: skip

        # Agreement first: on fresh data the index must give what the plain search gives, up to
        # the order of near-ties (the plain search ranks by Redis's own earth radius).
        agree = 0
        checked = points[: args.check]
        for lat, lng in checked:
            want = await plain(lat, lng)
            got = await index.find_nearby(lat, lng, radius, limit)
            agree += {d.driver_id.encode() for d in got} == set(want)
        print(f"same drivers as the plain GEOSEARCH at {agree}/{len(checked)} query points")

        for lat, lng in points[: args.warmup]:
            await plain(lat, lng)
            await index.find_nearby(lat, lng, radius, limit)
            await index.find_nearby(lat, lng, radius, limit, "car")
        times: dict[str, list[float]] = {"plain": [], "index": [], "vehicle": [], "ping": []}
        vehicles = [rnd.choice(VEHICLES) for _ in points]
        clock = time.perf_counter
        # Alternate in blocks rather than query by query: a plain search sorts thousands of
        # drivers and leaves Redis's caches cold for whatever runs next, which a service doing
        # only indexed searches would not see; blocks still spread machine noise over both.
        for start in range(0, len(points), args.block):
            block = range(start, min(start + args.block, len(points)))
            for i in block:
                t0 = clock()
                await plain(*points[i])
                times["plain"].append(clock() - t0)
            for _ in block:
                t0 = clock()
                await redis.execute_command("PING")
                times["ping"].append(clock() - t0)
            for i in block:
                t0 = clock()
                await index.find_nearby(*points[i], radius, limit)
                times["index"].append(clock() - t0)
            for i in block:
                t0 = clock()
                await index.find_nearby(*points[i], radius, limit, vehicles[i])
                times["vehicle"].append(clock() - t0)

        print(
            f"{len(points)} queries each: {limit} nearest within {radius:.0f} m, "
            f"{args.drivers} drivers in {args.side_km:.0f} km x {args.side_km:.0f} km "
            f"around Berlin, one at a time"
        )
        _, plain99 = report("plain GEOSEARCH (one key, all drivers)", times["plain"])
        _, index99 = report("GeoIndex.find_nearby", times["index"])
        _, vehicle99 = report("GeoIndex.find_nearby, one vehicle type", times["vehicle"])
        report("PING (the client's round trip: the floor)", times["ping"])
        print(f"  p99 ratio plain / find_nearby               {plain99 / index99:6.1f}x")
        print(f"  p99 ratio plain / find_nearby (vehicle)     {plain99 / vehicle99:6.1f}x")
        print(f"  mean find_nearby {statistics.fmean(times['index']) * 1000:.3f} ms")
        spread = [haversine_m(*BERLIN, e.lat, e.lng) for e in entries[:1000]]
        print(f"  (drivers up to {max(spread) / 1000:.1f} km from the centre)")
        print("reproduce: .venv/bin/python bench/nearby.py " + " ".join(sys.argv[1:]))
    finally:
        await redis.flushdb()
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--drivers", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--block", type=int, default=100, help="queries per alternation")
    parser.add_argument("--check", type=int, default=200, help="query points checked first")
    parser.add_argument("--radius-m", type=float, default=5000.0)
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--side-km", type=float, default=40.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS, help="a scratch db, flushed")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        asyncio.run(run(args))
    else:
        uvloop.run(run(args))


if __name__ == "__main__":
    main()
