"""location_svc's hot paths: (a) GPS ingest, (b) nearby search, (c) memory per open stream.

(a) GPS ingest: fixes/s through location_svc into the geo index, against a bare gRPC stream.
Both servers run in one invocation on the same machine, loaded the same way: many driver
streams, one fix per message as a phone sends them. The bare server decodes each message and
acks every 100, doing nothing else; location_svc runs the whole path (session, sanity
pipeline, batched Redis pipeline into the H3-sharded index, COPY into history, coalesced
acks). Then, at a fixed 10,000 fixes/s, probe drivers measure ack latency and freshness (a
fix sent to visible in FindNearbyDrivers).

(b) FindNearbyDrivers with 100,000 available drivers in one metro area (40 km x 40 km around
Berlin), loaded into a location_svc of its own that runs on a scratch Redis database: the RPC
(gRPC, auth and all) under an open loop of 200 queries/s, latency counted from each query's
scheduled send time; then, on the same data, the store-level ``GeoIndex.find_nearby`` against a
plain ``GEOSEARCH ... 5 km ASC COUNT 10`` on one key holding every driver (as bench/nearby.py).
The service's presence TTL is 30 s, so the drivers are filed again right before each phase.

(c) Memory per open stream: 10,000 driver streams, each opened, one fix sent and acked, then
idle; the growth of the server's VmRSS from before opening to all open, per stream, for
location_svc and for a bare grpc.aio server holding the same streams (it acks the first fix).

Parts (b) and (c) use the scratch Redis database (db 10 by default), flushed before and after;
they refuse db 0.

    .venv/bin/python bench/location.py [--parts a,b,c] [--seconds 10] [--streams 800]
        [--clients 2] [--nearby-drivers 100000] [--nearby-rate 200] [--open-streams 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import random
import statistics
import sys
import time
import urllib.parse
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import grpc
from google.protobuf import timestamp_pb2
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.nearby import BERLIN, PLAIN_KEY, box_point, load_drivers, quantile
from delivery.common.v1 import common_pb2
from delivery.location.v1 import (
    location_pb2,
    location_service_pb2,
    location_service_pb2_grpc,
)
from location_svc.store.geo_index import GeoIndex
from mesh.auth import Role, SessionStore, service_token
from mesh.migrate import migrate
from mesh.settings import ServerSettings, StoreSettings
from mesh.stores import make_redis
from mesh.testing import bearer, spawn
from mesh.workers import reserve_port

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
#: Parts (b) and (c) run their own location_svc on this database, flushed before and after.
DEFAULT_SCRATCH_REDIS = "redis://127.0.0.1:6379/10"
CENTER = (52.52, 13.405)
SECRET = uuid.uuid4().hex


class BareLocation(location_service_pb2_grpc.LocationServiceServicer):
    """The baseline: a stream that decodes every fix and acks every 100, nothing more.

    With ``ack_first`` (part (c)) it also acks the first fix, so a client knows its stream is
    open at the server, as location_svc's first ack tells it.
    """

    def __init__(self, ack_first: bool = False) -> None:
        self._ack_first = ack_first

    async def StreamLocation(self, request_iterator, context):
        count = 0
        async for _request in request_iterator:
            count += 1
            if count % 100 == 0 or (count == 1 and self._ack_first):
                await context.write(
                    location_service_pb2.StreamLocationResponse(acked_sequence=count)
                )
        await context.write(location_service_pb2.StreamLocationResponse(acked_sequence=count))

    async def FindNearbyDrivers(self, request, context):
        """Part (b)'s floor: the reply's size and shape, with no auth, search or store."""
        return _CANNED_NEARBY


def _canned_nearby() -> location_service_pb2.FindNearbyDriversResponse:
    reply = location_service_pb2.FindNearbyDriversResponse()
    for i in range(10):
        driver = reply.drivers.add(driver_id=str(uuid.UUID(int=i)), distance_meters=100.0 * i)
        driver.position.latitude, driver.position.longitude = BERLIN
        driver.vehicle_type = 1
        driver.fix_time.GetCurrentTime()
        driver.position_age_duration.FromMilliseconds(1500)
        driver.status = 1
    return reply


_CANNED_NEARBY = _canned_nearby()


def _bare_server(
    port_out: object, ack_first: bool = False, mesh_options: bool = False, port: int = 0
) -> None:
    """Runs the bare server; ``mesh_options`` applies the mesh's server options (part (c)).

    A non-zero ``port`` is shared (SO_REUSEPORT) with the other bare processes of part (a).
    """

    async def main() -> None:
        options = ServerSettings().server_options() if mesh_options else []
        if port:
            options = [*options, ("grpc.so_reuseport", 1)]
        server = grpc.aio.server(options=options)
        location_service_pb2_grpc.add_LocationServiceServicer_to_server(
            BareLocation(ack_first), server
        )
        bound = server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        port_out.put(bound)  # type: ignore[attr-defined]
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


#: Fixes a load stream may have sent and not yet seen acked, as a phone's bounded buffer.
MAX_IN_FLIGHT = 300


async def drive(
    target: str,
    drivers: list[tuple[str, str]],
    seconds: float,
    rate_per_stream: float | None,
) -> tuple[float, int, float, int, int]:
    """One stream per driver sending fixes for ``seconds``.

    Returns (fixes acked within the measuring window, sent, the window's length in seconds,
    refused streams, fixes acked in all). The window is the sending time after the first
    quarter (at most 1 s) of warm-up: a server that falls behind is measured while the load
    is on, not while it catches up after the load generator has stopped. Each stream keeps at
    most :data:`MAX_IN_FLIGHT` fixes unacknowledged, as a phone buffers a bounded number.

    ``rate_per_stream`` None sends as fast as that bound and flow control allow.
    """
    # Phones each hold a connection of their own; here one connection carries 20 streams. A
    # local subchannel pool per channel, or grpc would share one connection among them all
    # (and a server with several worker processes would see one or two connections).
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(max(1, len(drivers) // 20))
    ]
    stubs = [location_service_pb2_grpc.LocationServiceStub(c) for c in channels]
    window_acked = 0.0
    acked_total = 0
    sent_total = 0
    refused = 0
    started = time.perf_counter()
    deadline = started + seconds
    window_start = started + min(1.0, seconds / 4)

    async def one(i: int, driver_id: str, token: str) -> None:
        nonlocal acked_total, sent_total, refused, window_acked
        # The same start for a driver in every run: a jump between runs would be dropped as
        # an impossible speed.
        rng = random.Random(driver_id)
        lat = CENTER[0] + rng.uniform(-0.15, 0.15)
        lng = CENTER[1] + rng.uniform(-0.25, 0.25)
        base_ms = int(time.time() * 1000) - 20_000
        sent = 0
        last = 0
        # Fixes acked by the window's start and end, read off the line between the acks on
        # either side: servers ack every so many fixes or seconds, and counting whole acks
        # made the figure jump by one ack interval per stream (streams run in step).
        marks = {window_start: 0.0, deadline: 0.0}
        previous = (started, 0)
        acked = asyncio.Event()

        async def fixes():
            nonlocal sent
            # Paced by the clock, not by sleeping after each send: the rate holds however
            # long each send takes.
            due = time.perf_counter() + (rng.random() / rate_per_stream if rate_per_stream else 0)
            while time.perf_counter() < deadline:
                if rate_per_stream:
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                    due += 1 / rate_per_stream
                while sent - last >= MAX_IN_FLIGHT and time.perf_counter() < deadline:
                    acked.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(acked.wait(), deadline - time.perf_counter())
                if time.perf_counter() >= deadline:
                    break
                sent += 1
                # A few metres per fix and 1 ms of device time: plausible, strictly newer.
                yield _fix(lat + sent * 1e-6, lng, base_ms + sent, sent)

        call = stubs[i % len(stubs)].StreamLocation(fixes(), metadata=bearer(token))
        try:
            async for ack in call:
                now = time.perf_counter()
                sequence = ack.acked_sequence
                then, before = previous
                for mark in marks:
                    if then < mark <= now:
                        marks[mark] = before + (sequence - before) * (mark - then) / (now - then)
                previous = (now, sequence)
                last = sequence
                acked.set()
        except grpc.aio.AioRpcError:
            # A refused or broken stream (say UNAVAILABLE when the service's Redis pool is
            # exhausted by a burst of stream opens) is counted, not fatal to the run.
            refused += 1
        if previous[0] < deadline:
            # The stream ended (or broke) early: what it had acked is all it did.
            marks[deadline] = last
        if previous[0] < window_start:
            marks[window_start] = last
        window_acked += marks[deadline] - marks[window_start]
        acked_total += last
        sent_total += sent

    await asyncio.gather(*(one(i, d, token) for i, (d, token) in enumerate(drivers)))
    for channel in channels:
        await channel.close()
    return window_acked, sent_total, deadline - window_start, refused, acked_total


def _client(target: str, drivers: list, seconds: float, rate: float | None, out: object) -> None:
    try:
        result = _run(drive, target, drivers, seconds, rate)
    except BaseException as exc:
        out.put(exc)  # type: ignore[attr-defined]  # the parent raises it instead of waiting
        raise
    out.put(result)  # type: ignore[attr-defined]


def load(
    target: str, drivers: list, seconds: float, clients: int, rate: float | None = None
) -> tuple[float, int, int, int]:
    """Runs the drivers' streams from ``clients`` processes; returns (acked/s within the
    measuring window, acked in all, sent, refused streams)."""
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
    for result in results:
        if isinstance(result, BaseException):
            raise RuntimeError("a load-generator process failed") from result
    window_acked = sum(r[0] for r in results)
    sent = sum(r[1] for r in results)
    window_s = min(r[2] for r in results)
    refused = sum(r[3] for r in results)
    acked = sum(r[4] for r in results)
    return window_acked / window_s, acked, sent, refused


async def probe(
    target: str, probes: list[tuple[str, str]], rounds: int
) -> tuple[list[float], list[float], list[float]]:
    """Ack latency and freshness (sent to visible in FindNearbyDrivers) on open streams, in ms.

    Each probe driver opens its stream once (as a phone does for a shift; the first ack's
    latency, which includes opening the stream, is returned apart), then sends ``rounds`` fixes
    about 1.1 s apart (a fix per second is a fast phone; acks of faster senders are coalesced),
    each a metre on from the last at a spot far from the load, so the probe is the only driver
    the search finds there. A fix is fresh once FindNearbyDrivers returns the probe with that
    fix (the index stamps a fix with its receive time). Returns (acks, fresh, first acks).
    """
    channel = grpc.aio.insecure_channel(target)
    stub = location_service_pb2_grpc.LocationServiceStub(channel)
    matching = bearer(service_token(SECRET, "matching"))
    acks: list[float] = []
    fresh: list[float] = []
    first_acks: list[float] = []

    async def one(driver_id: str, token: str) -> None:
        # Seeded by the (new) driver id: a spot of its own, not one an earlier run's probe may
        # still hold for the presence TTL.
        rng = random.Random(driver_id)
        lat, lng = rng.uniform(-40, 40), rng.uniform(-150, 150)
        queue: asyncio.Queue = asyncio.Queue()

        async def requests():
            while (item := await queue.get()) is not None:
                yield item

        call = stub.StreamLocation(requests(), metadata=bearer(token))
        started = time.perf_counter()
        await queue.put(_fix(lat, lng, int(time.time() * 1000), 0))
        await call.read()
        first_acks.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(rng.uniform(1.1, 2.2))
        for seq in range(1, rounds + 1):
            lat += 1e-5
            fix_ms = int(time.time() * 1000)
            started = time.perf_counter()
            await queue.put(_fix(lat, lng, fix_ms, seq))
            while (await call.read()).acked_sequence < seq:
                pass
            acks.append((time.perf_counter() - started) * 1000)
            request = location_service_pb2.FindNearbyDriversRequest(
                center=common_pb2.LatLng(latitude=lat, longitude=lng), radius_meters=500, limit=5
            )
            while True:
                found = await stub.FindNearbyDrivers(request, metadata=matching)
                # The index files a fix at the server's receive time, which is not before
                # fix_ms (one clock: the same machine).
                if any(
                    d.driver_id == driver_id and d.fix_time.ToMilliseconds() >= fix_ms
                    for d in found.drivers
                ):
                    break
            fresh.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(max(0.0, 1.1 - (time.perf_counter() - started)))
        await queue.put(None)
        while await call.read() is not grpc.aio.EOF:
            pass

    await asyncio.gather(*(one(d, t) for d, t in probes))
    await channel.close()
    return acks, fresh, first_acks


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _run(coro_fn, *args):
    """Runs ``coro_fn(*args)`` to completion on uvloop when there is one (child processes)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(coro_fn(*args))
    return uvloop.run(coro_fn(*args))


def _scratch_db(redis_url: str) -> str:
    db = urllib.parse.urlparse(redis_url).path.strip("/") or "0"
    if db == "0":
        raise SystemExit("refusing to use Redis db 0 as the scratch db: parts (b), (c) flush it")
    return db


def _reproduce(args: argparse.Namespace, part: str) -> str:
    """The command that reproduces one part: this invocation's flags with ``--parts part``."""
    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if arg == "--parts":
            skip = True
            continue
        if arg.startswith("--parts="):
            continue
        argv.append(arg)
    return " ".join([".venv/bin/python bench/location.py", "--parts", part, *argv])


def _header(text: str) -> None:
    print(f"{text}, {os.cpu_count()} cores, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", flush=True)


async def _spawn_location(
    database_url: str, redis_url: str, workers: int = 1
) -> tuple[object, str]:
    process, served = await spawn(
        [sys.executable, "-m", "location_svc"],
        {
            "DELIVERY_DATABASE_URL": database_url,
            "DELIVERY_REDIS_URL": redis_url,
            "DELIVERY_LOCATION_LISTEN": "127.0.0.1:0",
            "DELIVERY_SERVICE_SECRET": SECRET,
            "DELIVERY_LOG_LEVEL": "WARNING",
            "DELIVERY_LOCATION_WORKERS": str(workers),
        },
    )
    return process, f"127.0.0.1:{served['location']}"


# --- (a) GPS ingest -----------------------------------------------------------------------------


async def part_a(args: argparse.Namespace, database_url: str) -> None:
    # Each probe jumps to a new far-away spot, so each probe driver is used once.
    drivers = await make_drivers(database_url, args.redis_url, args.streams + args.probes)
    load_drivers_, probes = drivers[: args.streams], drivers[args.streams :]

    # The bare server gets as many processes as location_svc has workers, on one shared port.
    ctx = multiprocessing.get_context("spawn")
    ports = ctx.Queue()
    reservation = reserve_port("127.0.0.1", 0)
    shared = reservation.getsockname()[1] if args.workers > 1 else 0
    bares = [
        ctx.Process(target=_bare_server, args=(ports, False, False, shared), daemon=True)
        for _ in range(args.workers)
    ]
    for bare in bares:
        bare.start()
    # Every bare process reports the port (the same one when shared); wait for all of them.
    bare_ports = {ports.get() for _ in bares}
    bare_target = f"127.0.0.1:{min(bare_ports)}"
    reservation.close()
    process, target = await _spawn_location(database_url, args.redis_url, args.workers)
    try:
        load(target, load_drivers_, 2.0, args.clients)  # warm up
        # Rounds alternate the two, so that the machine's moods (it is shared) fall on both;
        # the median round's figures are the result.
        rounds = []
        for _ in range(args.rounds):
            bare_round = load(bare_target, load_drivers_, args.seconds, args.clients)
            svc_round = load(target, load_drivers_, args.seconds, args.clients)
            rounds.append((svc_round[0] / bare_round[0], bare_round, svc_round))
        rounds.sort(key=lambda r: r[0])
        _, (bare_rate, _, bare_sent, _), (rate, acked, sent, refused) = rounds[len(rounds) // 2]
        # The fixed-rate phase: load at --probe-rate in the background, probes in front.
        per_stream = args.probe_rate / len(load_drivers_)
        background = asyncio.create_task(
            asyncio.to_thread(
                load, target, load_drivers_, args.seconds + 5, args.clients, per_stream
            )
        )
        await asyncio.sleep(3)
        acks, fresh, first_acks = await probe(target, probes, args.probe_rounds)
        steady_rate, _, _, steady_refused = await background
        conn = await asyncpg.connect(database_url)
        history = await conn.fetchval("SELECT count(*) FROM driver_location_history")
        await conn.close()
    finally:
        process.terminate()  # type: ignore[attr-defined]
        await process.wait()  # type: ignore[attr-defined]
        for bare in bares:
            bare.kill()

    print(
        f"(a) GPS ingest, {args.streams} streams from {args.clients} client processes, "
        f"{args.workers} server process(es) each (location_svc workers, bare processes), "
        f"{args.seconds:.0f} s, {os.cpu_count()} cores, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    if len(rounds) > 1:
        each = ", ".join(f"{r[2][0]:.0f}/{r[1][0]:.0f} = {r[0]:.2f}" for r in rounds)
        print(f"  {len(rounds)} rounds, location_svc/bare fixes/s: {each}; the median round:")
    print(f"  bare gRPC stream (decode, ack/100)  {bare_rate:9.0f} fixes/s  (sent {bare_sent})")
    print(
        f"  location_svc, whole path           {rate:9.0f} fixes/s  (sent {sent}, acked {acked}"
        + (f", {refused} streams refused)" if refused else ")")
    )
    print(f"  ratio                              {rate / bare_rate:9.2f}")
    print(f"  history rows written               {history:9d}")
    print(
        f"  at {args.probe_rate:.0f} fixes/s (achieved {steady_rate:.0f}/s): "
        f"ack p50 {statistics.median(acks):.1f} ms "
        f"p99 {pct(acks, 0.99):.1f} ms; fresh in search p50 {statistics.median(fresh):.1f} ms "
        f"p99 {pct(fresh, 0.99):.1f} ms ({len(fresh)} fixes from {len(probes)} open probe "
        "streams" + (f"; {steady_refused} load streams refused)" if steady_refused else ")")
    )
    print(
        f"  first ack on a new stream (opening included): p50 "
        f"{statistics.median(first_acks):.1f} ms p99 {pct(first_acks, 0.99):.1f} ms"
    )
    print("reproduce: " + _reproduce(args, "a"), flush=True)


# --- (b) FindNearbyDrivers at 100k drivers ------------------------------------------------------


async def _open_loop(
    target: str,
    server_pid: int | None,
    requests: list,
    warmup: int,
    rate: float,
    seconds: float,
    closed_loop: int,
    metadata: tuple = (),
) -> dict:
    """FindNearbyDrivers at ``rate``/s for ``seconds``, open loop, after ``warmup`` queries.

    Query i goes out at start + i / rate whatever happened to the others; its latency runs
    from that scheduled time to the reply, so a late send counts against it. Also returns the
    CPU seconds the server (``server_pid``, its threads included) and this client (the
    scheduling thread included) spent meanwhile.
    """
    channel = grpc.aio.insecure_channel(target)
    stub = location_service_pb2_grpc.LocationServiceStub(channel)
    for request in requests[:warmup]:
        await stub.FindNearbyDrivers(request, metadata=metadata, timeout=5)
    queries = int(rate * seconds)
    latency = [0.0] * queries
    found = [0] * queries
    lag = [0.0] * queries
    failed = 0
    clock = time.perf_counter

    async def one(i: int, scheduled: float) -> None:
        nonlocal failed
        try:
            reply = await stub.FindNearbyDrivers(requests[warmup + i], metadata=metadata, timeout=5)
            found[i] = len(reply.drivers)
        except grpc.aio.AioRpcError:
            failed += 1
        latency[i] = clock() - scheduled

    tasks = []
    loop = asyncio.get_running_loop()

    def fire(i: int, scheduled: float) -> None:
        lag[i] = clock() - scheduled
        tasks.append(asyncio.create_task(one(i, scheduled)))

    def schedule() -> None:
        # A thread keeps the schedule: time.sleep is precise to tens of microseconds, where
        # the event loop's timers are not (about 1 ms), and it spins no CPU away from the
        # servers. The loop starts each query as soon as it is told.
        for i in range(queries):
            scheduled = start + i / rate
            if (left := scheduled - clock()) > 0:
                time.sleep(left)
            loop.call_soon_threadsafe(fire, i, scheduled)

    server_cpu, client_cpu = _cpu_s(server_pid), time.process_time()
    start = clock() + 0.05
    # Callbacks run in order: every fire() has run when the thread's own completion arrives.
    await asyncio.to_thread(schedule)
    await asyncio.gather(*tasks)
    elapsed = clock() - start
    server_cpu = _cpu_s(server_pid) - server_cpu
    client_cpu = time.process_time() - client_cpu
    # For comparison, one query at a time back to back: no idle gap between queries for the
    # machine to doze in, no overlap either.
    closed = []
    for request in requests[warmup : warmup + closed_loop]:
        t = clock()
        await stub.FindNearbyDrivers(request, metadata=metadata, timeout=5)
        closed.append(clock() - t)
    await channel.close()
    return {
        "closed": closed,
        "latency": latency,
        "lag": lag,
        "found": found,
        "failed": failed,
        "elapsed": elapsed,
        "server_cpu": server_cpu,
        "client_cpu": client_cpu,
    }


def _cpu_s(pid: int | None) -> float:
    """User plus system CPU seconds of process ``pid`` (its threads included), from /proc."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _nearby_measure(
    target: str,
    svc_pid: int,
    bare_target: str,
    bare_pid: int,
    redis_url: str,
    secret: str,
    opts: dict,
) -> dict:
    """Part (b)'s client, in a process of its own: files the drivers, then measures."""
    # The service's own client, key prefix ("loc", the default) and presence TTL (30 s, the
    # default).
    redis = make_redis(StoreSettings(redis_url=redis_url))
    index = GeoIndex(redis)
    n, seed = opts["drivers"], opts["seed"]
    radius, limit = opts["radius_m"], opts["limit"]
    clock = time.perf_counter
    rnd = random.Random(seed + 1)
    queries = int(opts["rate"] * opts["seconds"])
    # The same queries go to the floor first, then to the service.
    points = [box_point(rnd, BERLIN, opts["side_km"]) for _ in range(queries + opts["warmup"])]
    requests = [
        location_service_pb2.FindNearbyDriversRequest(
            center=common_pb2.LatLng(latitude=lat, longitude=lng),
            radius_meters=radius,
            limit=limit,
        )
        for lat, lng in points
    ]
    metadata = bearer(service_token(secret, "matching"))
    warmup, rate, seconds = opts["warmup"], opts["rate"], opts["seconds"]
    closed = opts["closed_loop"]
    floor = await _open_loop(bare_target, bare_pid, requests, warmup, rate, seconds, closed)
    # Filed with the time now, so they stay findable for one presence TTL (30 s): enough for
    # the service's warm-up and open loop.
    t0 = clock()
    await load_drivers(redis, n, index=index, seed=seed, plain_key=PLAIN_KEY)
    load_s = clock() - t0
    shards = await redis.scard("loc:shards")
    rpc = await _open_loop(target, svc_pid, requests, warmup, rate, seconds, closed, metadata)

    # The store against the plain search, on freshly filed drivers (the service sweeps drivers
    # silent for 30 s), alternating in blocks as bench/nearby.py does.
    t0 = clock()
    await load_drivers(redis, n, index=index, seed=seed, plain_key=PLAIN_KEY)
    reload_s = clock() - t0
    store_points = [box_point(rnd, BERLIN, opts["side_km"]) for _ in range(opts["store_queries"])]

    async def plain(lat: float, lng: float) -> list:
        return await redis.execute_command(
            "GEOSEARCH", PLAIN_KEY, "FROMLONLAT", lng, lat,
            "BYRADIUS", radius, "m", "ASC", "COUNT", limit,
        )  # fmt: skip

    agree = 0
    for lat, lng in store_points[:200]:
        want = await plain(lat, lng)
        got = await index.find_nearby(lat, lng, radius, limit)
        agree += {d.driver_id.encode() for d in got} == set(want)
    times: dict[str, list[float]] = {"plain": [], "store": []}
    store_found = 0
    block = 100
    for s in range(0, len(store_points), block):
        chunk = store_points[s : s + block]
        for lat, lng in chunk:
            t = clock()
            await plain(lat, lng)
            times["plain"].append(clock() - t)
        for lat, lng in chunk:
            t = clock()
            got = await index.find_nearby(lat, lng, radius, limit)
            times["store"].append(clock() - t)
            store_found += len(got) == limit
    await redis.aclose()
    return {
        "load_s": load_s,
        "reload_s": reload_s,
        "shards": shards,
        "floor": floor,
        "rpc": rpc,
        "agree": agree,
        "checked": min(200, len(store_points)),
        "plain": times["plain"],
        "store": times["store"],
        "store_full": store_found,
    }


def _nearby_child(*args: object) -> None:
    *measure_args, out = args
    out.put(_run(_nearby_measure, *measure_args))  # type: ignore[attr-defined]


async def part_b(args: argparse.Namespace, database_url: str) -> None:
    _scratch_db(args.scratch_redis_url)
    redis = Redis.from_url(args.scratch_redis_url)
    await redis.flushdb()
    ctx = multiprocessing.get_context("spawn")
    ports = ctx.Queue()
    bare = ctx.Process(target=_bare_server, args=(ports, False, True), daemon=True)
    bare.start()
    bare_target = f"127.0.0.1:{ports.get()}"
    process, target = await _spawn_location(database_url, args.scratch_redis_url)
    opts = {
        "drivers": args.nearby_drivers,
        "seed": 1,
        "radius_m": 5000.0,
        "limit": 10,
        "side_km": 40.0,
        "rate": args.nearby_rate,
        "seconds": args.nearby_seconds,
        "warmup": 300,
        "store_queries": args.store_queries,
        "closed_loop": 1000,
    }
    try:
        out = ctx.Queue()
        child = ctx.Process(
            target=_nearby_child,
            args=(
                target,
                process.pid,  # type: ignore[attr-defined]
                bare_target,
                bare.pid,
                args.scratch_redis_url,
                SECRET,
                opts,
                out,
            ),
        )
        child.start()
        r = out.get()
        child.join()
    finally:
        process.terminate()  # type: ignore[attr-defined]
        await process.wait()  # type: ignore[attr-defined]
        bare.kill()
        await redis.flushdb()
        await redis.aclose()

    def ms(samples: list[float], q: float) -> float:
        return quantile(samples, q) * 1000

    _header(
        f"(b) FindNearbyDrivers, {args.nearby_drivers} available drivers in 40 km x 40 km "
        f"around Berlin ({r['shards']} shards, filed in {r['load_s']:.1f} s), "
        f"10 nearest within 5 km"
    )
    print(
        f"  open loop, {args.nearby_rate:.0f} q/s for {args.nearby_seconds:.0f} s, latency from "
        f"each query's scheduled send to its reply:"
    )
    for name, o in (
        ("bare grpc.aio, canned reply (floor)", r["floor"]),
        ("location_svc RPC", r["rpc"]),
    ):
        n = len(o["latency"])
        print(
            f"    {name:<36} p50 {ms(o['latency'], 0.5):7.3f} ms   "
            f"p99 {ms(o['latency'], 0.99):7.3f} ms   max {ms(o['latency'], 1.0):7.3f} ms"
        )
        print(
            f"      ({n} queries in {o['elapsed']:.1f} s, {o['failed']} failed, "
            f"{sum(f == 10 for f in o['found'])} with 10 drivers; send lag p99 "
            f"{ms(o['lag'], 0.99):.3f} ms; CPU per query: server "
            f"{o['server_cpu'] / n * 1000:.2f} ms, client {o['client_cpu'] / n * 1000:.2f} ms)"
        )
    print("    target: location_svc RPC p99 <= 1 ms")
    print("  closed loop, 1000 queries one at a time, back to back:")
    for name, o in (
        ("bare grpc.aio, canned reply (floor)", r["floor"]),
        ("location_svc RPC", r["rpc"]),
    ):
        print(
            f"    {name:<36} p50 {ms(o['closed'], 0.5):7.3f} ms   "
            f"p99 {ms(o['closed'], 0.99):7.3f} ms"
        )
    store_n = len(r["store"])
    print(
        f"  store, {store_n} queries one at a time, alternating in blocks of 100 "
        f"(drivers filed again in {r['reload_s']:.1f} s; same drivers as plain at "
        f"{r['agree']}/{r['checked']} points, 10 found at {r['store_full']}/{store_n})"
    )
    _, plain99 = ms(r["plain"], 0.5), ms(r["plain"], 0.99)
    store99 = ms(r["store"], 0.99)
    print(
        f"    plain GEOSEARCH (one key, all)   p50 {ms(r['plain'], 0.5):7.3f} ms   "
        f"p99 {plain99:7.3f} ms"
    )
    print(
        f"    GeoIndex.find_nearby             p50 {ms(r['store'], 0.5):7.3f} ms   "
        f"p99 {store99:7.3f} ms"
    )
    print(f"    p99 ratio plain / store          {plain99 / store99:7.1f}x   (target >= 15x)")
    print("reproduce: " + _reproduce(args, "b"), flush=True)


# --- (c) memory per open stream -----------------------------------------------------------------


async def _hold_streams(
    target: str, drivers: list, channels: int, rate: float, ready: object, release: object
) -> None:
    """Part (c)'s client: opens one stream per driver at ``rate``/s, one fix each, waits for
    each stream's first ack, reports, and holds them all until ``release`` is set."""
    # A local subchannel pool per channel: without it, channels to one target share one
    # connection, and one connection carries at most max_concurrent_streams (1000) streams.
    chans = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(channels)
    ]
    stubs = [location_service_pb2_grpc.LocationServiceStub(c) for c in chans]
    held = asyncio.Event()
    all_in = asyncio.Event()
    acked = failed = retried = 0

    async def one(i: int, driver_id: str, token: str) -> None:
        try:
            await hold(i, driver_id, token)
        finally:
            if acked + failed == len(drivers):
                all_in.set()

    async def hold(i: int, driver_id: str, token: str) -> None:
        nonlocal acked, failed, retried
        lat, lng = box_point(random.Random(driver_id), BERLIN, 40.0)
        stub = stubs[i % len(stubs)]
        # An app retries a refused stream with backoff; the retries are counted and printed.
        for attempt in range(1, 7):
            call = stub.StreamLocation(metadata=bearer(token))
            try:
                await call.write(_fix(lat, lng, int(time.time() * 1000) - 1000, attempt))
                ack = await asyncio.wait_for(call.read(), 60)
            except grpc.aio.AioRpcError as exc:
                call.cancel()
                if exc.code() is grpc.StatusCode.UNAVAILABLE and attempt < 6:
                    retried += 1
                    await asyncio.sleep(random.uniform(0.5, 1.0) * 2**attempt)
                    continue
                failed += 1
                return
            except TimeoutError:
                call.cancel()
                failed += 1
                return
            break
        if ack is grpc.aio.EOF or ack.acked_sequence != attempt:
            failed += 1
            return
        acked += 1
        if acked + failed == len(drivers):
            all_in.set()
        await held.wait()
        with contextlib.suppress(grpc.aio.AioRpcError):
            await call.done_writing()
            while await call.read() is not grpc.aio.EOF:
                pass

    tasks = []
    started = time.perf_counter()
    for i, (driver_id, token) in enumerate(drivers):
        tasks.append(asyncio.create_task(one(i, driver_id, token)))
        await asyncio.sleep(max(0.0, started + (i + 1) / rate - time.perf_counter()))
    await all_in.wait()
    elapsed = time.perf_counter() - started
    ready.put((acked, failed, retried, elapsed))  # type: ignore[attr-defined]
    await asyncio.to_thread(release.wait)  # type: ignore[attr-defined]
    held.set()
    await asyncio.gather(*tasks)
    for chan in chans:
        await chan.close()


def _holder_child(
    target: str, drivers: list, channels: int, rate: float, ready: object, release: object
) -> None:
    _run(_hold_streams, target, drivers, channels, rate, ready, release)
    ready.put(None)  # type: ignore[attr-defined]


def vm_rss_kb(pid: int) -> int:
    """The process's resident set (VmRSS) in KB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


async def _open_streams(args: argparse.Namespace, target: str, drivers: list) -> tuple:
    """Opens ``drivers``' streams from several processes; returns (acked, failed, retried,
    seconds, close) once all are open and acked; ``close()`` closes them."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    release = ctx.Event()
    n = args.stream_clients
    parts = [drivers[i::n] for i in range(n)]
    procs = [
        ctx.Process(
            target=_holder_child,
            args=(target, part, args.stream_channels, args.open_rate / n, ready, release),
        )
        for part in parts
    ]
    for proc in procs:
        proc.start()
    results = [await asyncio.to_thread(ready.get) for _ in procs]
    acked = sum(r[0] for r in results)
    failed = sum(r[1] for r in results)
    retried = sum(r[2] for r in results)
    seconds = max(r[3] for r in results)

    async def close() -> None:
        release.set()
        for _ in procs:
            await asyncio.to_thread(ready.get)
        for proc in procs:
            await asyncio.to_thread(proc.join)

    return acked, failed, retried, seconds, close


async def _measure_streams(args: argparse.Namespace, pid: int, target: str, drivers: list):
    warm, load_ = drivers[: args.warm_streams], drivers[args.warm_streams :]
    # Warm up: a few hundred streams opened and closed, so one-time costs (pools, lazily
    # built structures) are not charged to the streams measured.
    *_, close = await _open_streams(args, target, warm)
    await close()
    await asyncio.sleep(2)
    before = vm_rss_kb(pid)
    acked, failed, retried, seconds, close = await _open_streams(args, target, load_)
    await asyncio.sleep(args.settle)
    after = vm_rss_kb(pid)
    await close()
    return before, after, acked, failed, retried, seconds


async def part_c(args: argparse.Namespace, database_url: str) -> None:
    _scratch_db(args.scratch_redis_url)
    redis = Redis.from_url(args.scratch_redis_url)
    await redis.flushdb()
    n = args.open_streams
    drivers = await make_drivers(database_url, args.scratch_redis_url, n + args.warm_streams)
    ctx = multiprocessing.get_context("spawn")
    ports = ctx.Queue()
    bare = ctx.Process(target=_bare_server, args=(ports, True, True), daemon=True)
    bare.start()
    bare_target = f"127.0.0.1:{ports.get()}"
    process, target = await _spawn_location(database_url, args.scratch_redis_url)
    try:
        bare_figures = await _measure_streams(args, bare.pid, bare_target, drivers)
        svc_figures = await _measure_streams(args, process.pid, target, drivers)  # type: ignore[attr-defined]
    finally:
        process.terminate()  # type: ignore[attr-defined]
        await process.wait()  # type: ignore[attr-defined]
        bare.kill()
        await redis.flushdb()
        await redis.aclose()

    channels = args.stream_clients * args.stream_channels
    _header(
        f"(c) memory per open stream, {n} driver streams (one fix each, acked, then idle) "
        f"from {args.stream_clients} client processes over {channels} connections"
    )
    per = {}
    for name, (before, after, acked, failed, retried, seconds) in (
        ("bare grpc.aio server (ack 1st fix)", bare_figures),
        ("location_svc", svc_figures),
    ):
        per[name] = (after - before) / max(1, acked)
        print(
            f"  {name:<36} VmRSS {before / 1024:6.1f} -> {after / 1024:6.1f} MB  "
            f"{per[name]:5.1f} KB/stream  ({acked} open and acked, {failed} failed, "
            f"{retried} retried after UNAVAILABLE, opened in {seconds:.1f} s)"
        )
    bare_kb, svc_kb = per.values()
    print(
        f"  location_svc - bare                  {svc_kb - bare_kb:5.1f} KB/stream   "
        f"(target <= 40 KB/stream each)"
    )
    print("reproduce: " + _reproduce(args, "c"), flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", default="a,b,c", help="which parts to run, e.g. a,c")
    parser.add_argument("--seconds", type=float, default=10.0, help="(a) seconds per phase")
    parser.add_argument("--streams", type=int, default=800, help="(a) load streams")
    parser.add_argument(
        "--rounds", type=int, default=3, help="(a) bare/location_svc rounds (median reported)"
    )
    parser.add_argument("--clients", type=int, default=2, help="(a) load-generator processes")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="(a) server processes: location_svc workers, and as many bare servers",
    )
    parser.add_argument("--probe-rate", type=float, default=10_000.0)
    parser.add_argument("--probes", type=int, default=30, help="(a) probe drivers")
    parser.add_argument("--probe-rounds", type=int, default=4, help="(a) fixes per probe")
    parser.add_argument("--nearby-drivers", type=int, default=100_000, help="(b)")
    parser.add_argument("--nearby-rate", type=float, default=200.0, help="(b) queries/s")
    parser.add_argument("--nearby-seconds", type=float, default=10.0, help="(b) open-loop time")
    parser.add_argument("--store-queries", type=int, default=2000, help="(b) each, store/plain")
    parser.add_argument("--open-streams", type=int, default=10_000, help="(c)")
    parser.add_argument("--warm-streams", type=int, default=200, help="(c) opened first")
    parser.add_argument("--stream-clients", type=int, default=4, help="(c) client processes")
    parser.add_argument("--stream-channels", type=int, default=4, help="(c) per client")
    parser.add_argument("--open-rate", type=float, default=500.0, help="(c) streams/s")
    parser.add_argument("--settle", type=float, default=3.0, help="(c) seconds before RSS")
    env = os.environ
    parser.add_argument("--database-url", default=env.get("DELIVERY_TEST_DATABASE_URL", DEFAULT_PG))
    parser.add_argument("--redis-url", default=env.get("DELIVERY_TEST_REDIS_URL", DEFAULT_REDIS))
    parser.add_argument(
        "--scratch-redis-url", default=DEFAULT_SCRATCH_REDIS, help="(b), (c): flushed"
    )
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or set(parts) - {"a", "b", "c"}:
        parser.error("--parts takes a comma-separated subset of a,b,c")
    if {"b", "c"} & set(parts):
        _scratch_db(args.scratch_redis_url)
    if "c" in parts and args.open_streams > args.stream_clients * args.stream_channels * 1000:
        parser.error("(c) needs more connections: at most 1000 streams ride on each")

    name = f"delivery_bench_{uuid.uuid4().hex[:8]}"
    base = args.database_url.rpartition("/")[0]
    database_url = f"{base}/{name}"
    await migrate(database_url)
    try:
        for part in parts:
            await {"a": part_a, "b": part_b, "c": part_c}[part](args, database_url)
    finally:
        admin = await asyncpg.connect(args.database_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
