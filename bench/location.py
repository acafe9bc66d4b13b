"""GPS ingest: fixes/s through location_svc into the geo index, against a bare gRPC stream.

Both servers run in one invocation on the same machine, loaded the same way: many driver
streams, one fix per message as a phone sends them. The bare server decodes each message and
acks every 100, doing nothing else; location_svc runs the whole path (session, sanity
pipeline, batched Redis pipeline into the H3-sharded index, COPY into history, coalesced
acks). Then, at a fixed 10,000 fixes/s, probe drivers measure ack latency and freshness (a
fix sent to visible in FindNearbyDrivers).

    .venv/bin/python bench/location.py [--seconds 10] [--streams 800] [--clients 2]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import grpc
from google.protobuf import timestamp_pb2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from delivery.common.v1 import common_pb2
from delivery.location.v1 import (
    location_pb2,
    location_service_pb2,
    location_service_pb2_grpc,
)
from mesh.auth import Role, SessionStore, service_token
from mesh.migrate import migrate
from mesh.settings import StoreSettings
from mesh.stores import make_redis
from mesh.testing import bearer, spawn

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
CENTER = (52.52, 13.405)
SECRET = uuid.uuid4().hex


class BareLocation(location_service_pb2_grpc.LocationServiceServicer):
    """The baseline: a stream that decodes every fix and acks every 100, nothing more."""

    async def StreamLocation(self, request_iterator, context):
        count = 0
        async for _request in request_iterator:
            count += 1
            if count % 100 == 0:
                await context.write(
                    location_service_pb2.StreamLocationResponse(acked_sequence=count)
                )
        await context.write(location_service_pb2.StreamLocationResponse(acked_sequence=count))


def _bare_server(port_out: object) -> None:
    async def main() -> None:
        server = grpc.aio.server()
        location_service_pb2_grpc.add_LocationServiceServicer_to_server(BareLocation(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        port_out.put(port)  # type: ignore[attr-defined]
        await server.wait_for_termination()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


async def make_drivers(database_url: str, redis_url: str, n: int) -> list[tuple[str, str]]:
    """``n`` available couriers with sessions, written directly (sign-up hashes are slow)."""
    conn = await asyncpg.connect(database_url)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    await conn.executemany(
        "INSERT INTO users (id, email, password_hash, name, role)"
        " VALUES ($1::uuid, $2, 'x', 'Bench', 'driver')",
        [(i, f"bench-{i}@example.com") for i in ids],
    )
    await conn.executemany(
        "INSERT INTO drivers (id, vehicle_type, status) VALUES ($1::uuid, 'bicycle', 'available')",
        [(i,) for i in ids],
    )
    await conn.close()
    redis = make_redis(StoreSettings(redis_url=redis_url))
    sessions = SessionStore(redis, ttl_s=3600, service_secret=SECRET)
    tokens = [await sessions.create(i, Role.DRIVER) for i in ids]
    await redis.aclose()
    return list(zip(ids, tokens, strict=True))


def _fix(lat: float, lng: float, ms: int, seq: int) -> location_service_pb2.StreamLocationRequest:
    return location_service_pb2.StreamLocationRequest(
        fix=location_pb2.LocationFix(
            position=common_pb2.LatLng(latitude=lat, longitude=lng),
            accuracy_meters=8.0,
            speed_mps=4.0,
            device_time=timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000),
            sequence=seq,
        )
    )


async def drive(
    target: str,
    drivers: list[tuple[str, str]],
    seconds: float,
    rate_per_stream: float | None,
) -> tuple[int, int, float]:
    """One stream per driver sending fixes for ``seconds``; returns (acked, sent, elapsed).

    ``rate_per_stream`` None sends as fast as flow control allows.
    """
    channels = [grpc.aio.insecure_channel(target) for _ in range(8)]
    stubs = [location_service_pb2_grpc.LocationServiceStub(c) for c in channels]
    acked_total = 0
    sent_total = 0
    deadline = time.perf_counter() + seconds

    async def one(i: int, driver_id: str, token: str) -> None:
        nonlocal acked_total, sent_total
        # The same start for a driver in every run: a jump between runs would be dropped as
        # an impossible speed.
        rng = random.Random(driver_id)
        lat = CENTER[0] + rng.uniform(-0.15, 0.15)
        lng = CENTER[1] + rng.uniform(-0.25, 0.25)
        base_ms = int(time.time() * 1000) - 20_000
        sent = 0

        async def fixes():
            nonlocal sent
            while time.perf_counter() < deadline:
                sent += 1
                # A few metres per fix and 1 ms of device time: plausible, strictly newer.
                yield _fix(lat + sent * 1e-6, lng, base_ms + sent, sent)
                if rate_per_stream:
                    await asyncio.sleep(1 / rate_per_stream)

        call = stubs[i % len(stubs)].StreamLocation(fixes(), metadata=bearer(token))
        last = 0
        async for ack in call:
            last = ack.acked_sequence
        acked_total += last
        sent_total += sent

    started = time.perf_counter()
    await asyncio.gather(*(one(i, d, token) for i, (d, token) in enumerate(drivers)))
    elapsed = time.perf_counter() - started
    for channel in channels:
        await channel.close()
    return acked_total, sent_total, elapsed


def _client(target: str, drivers: list, seconds: float, rate: float | None, out: object) -> None:
    try:
        import uvloop

        result = uvloop.run(drive(target, drivers, seconds, rate))
    except ImportError:
        result = asyncio.run(drive(target, drivers, seconds, rate))
    out.put(result)  # type: ignore[attr-defined]


def load(
    target: str, drivers: list, seconds: float, clients: int, rate: float | None = None
) -> tuple[float, int, int]:
    """Runs the drivers' streams from ``clients`` processes; returns (acked/s, acked, sent)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    parts = [drivers[i::clients] for i in range(clients)]
    procs = [
        ctx.Process(target=_client, args=(target, part, seconds, rate, queue)) for part in parts
    ]
    for proc in procs:
        proc.start()
    results = [queue.get() for _ in procs]
    for proc in procs:
        proc.join()
    acked = sum(r[0] for r in results)
    sent = sum(r[1] for r in results)
    elapsed = max(r[2] for r in results)
    return acked / elapsed, acked, sent


async def probe(
    target: str, probes: list[tuple[str, str]], rounds: int
) -> tuple[list[float], list[float]]:
    """Ack latency and freshness (sent to visible in FindNearbyDrivers), in ms."""
    channel = grpc.aio.insecure_channel(target)
    stub = location_service_pb2_grpc.LocationServiceStub(channel)
    matching = bearer(service_token(SECRET, "matching"))
    acks: list[float] = []
    fresh: list[float] = []
    rng = random.Random(7)
    for r in range(rounds):
        driver_id, token = probes[r % len(probes)]
        # A spot far from the load, so the probe is the only driver the search can find.
        lat, lng = rng.uniform(-40, 40), rng.uniform(-150, 150)
        queue: asyncio.Queue = asyncio.Queue()

        async def requests(q: asyncio.Queue = queue):
            while (item := await q.get()) is not None:
                yield item

        call = stub.StreamLocation(requests(), metadata=bearer(token))
        started = time.perf_counter()
        await queue.put(_fix(lat, lng, int(time.time() * 1000), 1))
        ack = await call.read()
        acks.append((time.perf_counter() - started) * 1000)
        assert ack.acked_sequence == 1, ack
        while True:
            found = await stub.FindNearbyDrivers(
                location_service_pb2.FindNearbyDriversRequest(
                    center=common_pb2.LatLng(latitude=lat, longitude=lng),
                    radius_meters=500,
                    limit=1,
                ),
                metadata=matching,
            )
            if any(d.driver_id == driver_id for d in found.drivers):
                break
        fresh.append((time.perf_counter() - started) * 1000)
        await queue.put(None)
        while await call.read() is not grpc.aio.EOF:
            pass
        await asyncio.sleep(0.02)
    await channel.close()
    return acks, fresh


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--streams", type=int, default=800)
    parser.add_argument("--clients", type=int, default=2, help="load-generator processes")
    parser.add_argument("--probe-rate", type=float, default=10_000.0)
    parser.add_argument("--probes", type=int, default=100)
    env = os.environ
    parser.add_argument("--database-url", default=env.get("DELIVERY_TEST_DATABASE_URL", DEFAULT_PG))
    parser.add_argument("--redis-url", default=env.get("DELIVERY_TEST_REDIS_URL", DEFAULT_REDIS))
    args = parser.parse_args()

    name = f"delivery_bench_{uuid.uuid4().hex[:8]}"
    base = args.database_url.rpartition("/")[0]
    database_url = f"{base}/{name}"
    await migrate(database_url)
    # Each probe jumps to a new far-away spot, so each probe driver is used once.
    drivers = await make_drivers(database_url, args.redis_url, args.streams + args.probes)
    load_drivers, probes = drivers[: args.streams], drivers[args.streams :]

    ctx = multiprocessing.get_context("spawn")
    ports = ctx.Queue()
    bare = ctx.Process(target=_bare_server, args=(ports,), daemon=True)
    bare.start()
    bare_target = f"127.0.0.1:{ports.get()}"
    process, served = await spawn(
        [sys.executable, "-m", "location_svc"],
        {
            "DELIVERY_DATABASE_URL": database_url,
            "DELIVERY_REDIS_URL": args.redis_url,
            "DELIVERY_LOCATION_LISTEN": "127.0.0.1:0",
            "DELIVERY_SERVICE_SECRET": SECRET,
            "DELIVERY_LOG_LEVEL": "WARNING",
        },
    )
    target = f"127.0.0.1:{served['location']}"
    try:
        load(target, load_drivers, 2.0, args.clients)  # warm up
        bare_rate, _, bare_sent = load(bare_target, load_drivers, args.seconds, args.clients)
        rate, acked, sent = load(target, load_drivers, args.seconds, args.clients)
        # The fixed-rate phase: load at --probe-rate in the background, probes in front.
        per_stream = args.probe_rate / len(load_drivers)
        background = asyncio.create_task(
            asyncio.to_thread(
                load, target, load_drivers, args.seconds + 5, args.clients, per_stream
            )
        )
        await asyncio.sleep(3)
        acks, fresh = await probe(target, probes, args.probes)
        steady_rate, _, _ = await background
        conn = await asyncpg.connect(database_url)
        history = await conn.fetchval("SELECT count(*) FROM driver_location_history")
        await conn.close()
    finally:
        process.terminate()
        await process.wait()
        bare.kill()
        admin = await asyncpg.connect(args.database_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

    print(
        f"GPS ingest, {args.streams} streams from {args.clients} client processes, "
        f"{args.seconds:.0f} s, {os.cpu_count()} cores, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    print(f"  bare gRPC stream (decode, ack/100)  {bare_rate:9.0f} fixes/s  (sent {bare_sent})")
    print(f"  location_svc, whole path           {rate:9.0f} fixes/s  (sent {sent}, acked {acked})")
    print(f"  ratio                              {rate / bare_rate:9.2f}")
    print(f"  history rows written               {history:9d}")
    print(
        f"  at {args.probe_rate:.0f} fixes/s (achieved {steady_rate:.0f}/s): "
        f"ack p50 {statistics.median(acks):.1f} ms "
        f"p99 {pct(acks, 0.99):.1f} ms; fresh in search p50 {statistics.median(fresh):.1f} ms "
        f"p99 {pct(fresh, 0.99):.1f} ms ({len(fresh)} probes)"
    )
    print("reproduce: .venv/bin/python bench/location.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    asyncio.run(main())
