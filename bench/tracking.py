"""Tracking fan-out: from a GPS fix entering location_svc to a TrackOrder watcher receiving it.

Starts location_svc and tracking_svc as processes on a scratch database and a Redis database of
the bench's own. ``--orders`` orders (2,000) are written straight into PostgreSQL in their
assigned state (preparing, courier set), each with its own courier, customer and shop. Every
courier streams a fix a second (StreamLocation, staggered, a metre or so per fix, device time
stamped with the wall clock when the fix is sent); every order is watched by
``--watchers-per-order`` TrackOrder streams (5: the customer's phone and laptop, the shop's
owner, the courier, an admin), 100 streams to a channel. A watcher that receives a
courier_position takes now - fix_time as the lag (the fix's device time in ms, so each sample is
at most 1 ms long). Measured over a window of ``--seconds`` after a warm-up:

1. tracking: lag p50/p99/max and delivered positions/s;
2. the same with ``--other-rate`` fixes/s of other drivers going on (1 fix/s each) - a city;
3. the baseline, in the same run after the services are stopped: a bare grpc.aio server that
   takes the same couriers' StreamLocation and pushes each fix, as a courier_position, to the
   same number of TrackOrder streams held by the same client processes and channels.

Load generators and watchers run in processes of their own (one for the couriers, one for the
other drivers, ``--watch-processes`` for the watchers), the same arrangement for both servers.
CPU seconds of every process (and Redis) over each window are read from /proc.

    .venv/bin/python bench/tracking.py [--orders 2000] [--watchers-per-order 5] [--seconds 20]
        [--other-rate 5000] [--watch-processes 2] [--quick]
"""

from __future__ import annotations

import argparse
import array
import asyncio
import collections
import contextlib
import gc
import multiprocessing
import os
import random
import resource
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import redis.asyncio
from google.protobuf import duration_pb2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.dispatch import spot
from bench.location import SECRET, _fix
from bench.nearby import quantile
from delivery.common.v1 import common_pb2
from delivery.location.v1 import location_service_pb2, location_service_pb2_grpc
from delivery.tracking.v1 import tracking_pb2, tracking_service_pb2, tracking_service_pb2_grpc
from mesh.auth import Role, SessionStore, service_token
from mesh.migrate import migrate
from mesh.server import DEFAULT_GC_THRESHOLD
from mesh.settings import ServerSettings, StoreSettings
from mesh.stores import make_redis
from mesh.testing import bearer, spawn

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
#: A Redis database of the bench's own, emptied before and after: the services' streams, logs
#: and geo index would otherwise meet the tests' (database 0) and the other benches'.
DEFAULT_REDIS = "redis://127.0.0.1:6379/11"
STREAMS_PER_CHANNEL = 100
#: Couriers watched straight on location_svc (WatchDriverLocation as tracking_svc opens it),
#: to split the lag into location_svc's part and tracking_svc's.
PROBES = 100
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


# --- the data -------------------------------------------------------------------------------


async def _sessions(redis_url: str, people: list[tuple[str, Role]]) -> list[str]:
    """A session token for each (user, role), made directly (sign-in hashes are slow)."""
    client = make_redis(StoreSettings(redis_url=redis_url))
    store = SessionStore(client, ttl_s=3600, service_secret=SECRET)
    tokens: list[str] = []
    for i in range(0, len(people), 500):
        tokens += await asyncio.gather(*(store.create(u, r) for u, r in people[i : i + 500]))
    await client.aclose()
    return tokens


async def _users(conn: asyncpg.Connection, n: int, role: str) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    await conn.executemany(
        "INSERT INTO users (id, email, password_hash, name, role)"
        " VALUES ($1::uuid, $2, 'x', 'Bench', $3)",
        [(i, f"t-{i}@example.com", role) for i in ids],
    )
    return ids


async def make_world(
    database_url: str, redis_url: str, n_orders: int, n_others: int, rnd: random.Random
) -> dict[str, Any]:
    """``n_orders`` orders being prepared, each with a courier of its own set on the row (as
    matching's accept leaves it), and ``n_others`` more available couriers; sessions for all."""
    conn = await asyncpg.connect(database_url)
    try:
        couriers = await _users(conn, n_orders + n_others, "driver")
        await conn.executemany(
            "INSERT INTO drivers (id, vehicle_type, status, active_order_count)"
            " VALUES ($1::uuid, 'bicycle', $2, $3)",
            [
                (d, "busy" if i < n_orders else "available", int(i < n_orders))
                for i, d in enumerate(couriers)
            ],
        )
        customers = await _users(conn, n_orders, "customer")
        owners = await _users(conn, n_orders, "merchant")
        (admin,) = await _users(conn, 1, "admin")
        merchants = [str(uuid.uuid4()) for _ in range(n_orders)]
        orders = [str(uuid.uuid4()) for _ in range(n_orders)]
        shops = [spot(rnd) for _ in range(n_orders)]
        await conn.executemany(
            "INSERT INTO merchants (id, owner_user_id, name, address, lat, lng)"
            " VALUES ($1::uuid, $2::uuid, 'Shop', '1 Main St', $3, $4)",
            [(m, o, *s) for m, o, s in zip(merchants, owners, shops, strict=True)],
        )
        await conn.executemany(
            "INSERT INTO orders (id, customer_id, merchant_id, driver_id, status,"
            " delivery_address, delivery_lat, delivery_lng, currency_code, subtotal_minor,"
            " total_minor, confirmed_at)"
            " VALUES ($1::uuid, $2::uuid, $3::uuid, $4::uuid, 'preparing', '2 Side St', $5, $6,"
            " 'EUR', 1000, 1000, now())",
            [
                (o, c, m, d, s[0] + 0.01, s[1])
                for o, c, m, d, s in zip(
                    orders, customers, merchants, couriers[:n_orders], shops, strict=True
                )
            ],
        )
    finally:
        await conn.close()
    people = [(d, Role.DRIVER) for d in couriers]
    people += [(c, Role.CUSTOMER) for c in customers] * 2  # a phone and a laptop
    people += [(o, Role.MERCHANT) for o in owners]
    people.append((admin, Role.ADMIN))
    tokens = await _sessions(redis_url, people)
    n, k = n_orders, n_orders + n_others
    courier_tokens, phone, laptop = tokens[:k], tokens[k : k + n], tokens[k + n : k + 2 * n]
    owner_tokens, admin_token = tokens[k + 2 * n : k + 3 * n], tokens[-1]
    watchers = [phone, laptop, owner_tokens, courier_tokens[:n], [admin_token] * n]
    return {
        "orders": orders,
        # (driver, token, start lat, start lng): couriers start at their order's shop.
        "couriers": [(couriers[i], courier_tokens[i], *shops[i]) for i in range(n)],
        "others": [(couriers[i], courier_tokens[i], *spot(rnd)) for i in range(n, k)],
        # Per order, the tokens of its watchers (the fifth and beyond repeat the first four).
        "watchers": [[watchers[j % 5][i] for j in range(5)] for i in range(n)],
    }


# --- child processes ------------------------------------------------------------------------


def _run(coro_fn: Callable[..., Any], *args: Any) -> None:
    try:
        import uvloop

        uvloop.run(coro_fn(*args))
    except ImportError:  # pragma: no cover
        asyncio.run(coro_fn(*args))


def _collector_as_services() -> None:
    """The generator's own collector as the services' (mesh.server): a full collection over
    thousands of streams would otherwise stall the client and count as lag."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(DEFAULT_GC_THRESHOLD, *gc.get_threshold()[1:])


async def _recv(conn: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, conn.recv)


def _cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` (and its reaped children's) in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


async def _gps(conn: Any, target: str, drivers: list, rate: float) -> None:
    """Each driver streams a fix every ``1/rate`` s until told to stop; sends counted a second."""
    channels = [
        grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        for _ in range(0, len(drivers), STREAMS_PER_CHANNEL)
    ]
    stop = asyncio.Event()
    sent: collections.Counter[int] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()

    async def one(i: int, driver: str, token: str, lat: float, lng: float) -> None:
        rnd = random.Random(driver)
        stub = location_service_pb2_grpc.LocationServiceStub(channels[i // STREAMS_PER_CHANNEL])

        seq = 0
        # Paced by the clock, staggered over the first interval.
        due = time.perf_counter() + rnd.random() / rate

        async def fixes():  # type: ignore[no-untyped-def]
            nonlocal seq, due
            while True:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                if stop.is_set():
                    return
                due += 1 / rate
                seq += 1
                now = time.time()
                sent[int(now)] += 1
                # About a metre north per fix: far below the 250 km/h the filter allows.
                yield _fix(lat + seq * 1e-5, lng, int(now * 1000), seq)

        # A stream that breaks is opened again, as the app does; the sequence carries on.
        while not stop.is_set():
            call = stub.StreamLocation(fixes(), metadata=bearer(token))
            try:
                async for _ in call:
                    pass
            except grpc.aio.AioRpcError as exc:
                if not stop.is_set():
                    errors[f"{exc.code().name}: {exc.details()}"[:90]] += 1
                    await asyncio.sleep(0.5)

    tasks = [asyncio.create_task(one(i, *d)) for i, d in enumerate(drivers)]
    conn.send(("started", len(tasks)))
    await asyncio.sleep(2.0)
    _collector_as_services()
    await _recv(conn)  # stop
    stop.set()
    await asyncio.sleep(1.5 / rate)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()
    conn.send(("done", dict(sent), dict(errors)))


def gps_process(conn: Any, target: str, drivers: list, rate: float) -> None:
    _run(_gps, conn, target, drivers, rate)


async def _watch(
    conn: Any, target: str, streams: list, probes: list, location_target: str, open_s: float
) -> None:
    """Holds TrackOrder streams (order index, order id, token); records every courier_position
    as (receive time, lag ms); ``probes`` are drivers watched on location_svc directly."""
    channels = [
        grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        for _ in range(0, len(streams), STREAMS_PER_CHANNEL)
    ]
    recv_at = array.array("d")
    lags = array.array("f")
    probe_at = array.array("d")
    probe_lags = array.array("f")
    seen_orders: set[int] = set()
    kinds: collections.Counter[str] = collections.Counter()
    failed: collections.Counter[str] = collections.Counter()
    opened = 0
    open_times: list[float] = []
    everyone_open = asyncio.Event()
    pending = len(streams)
    # Opens in flight at once: a new feed reads the order and seeds its log.
    gate = asyncio.Semaphore(250)
    started = time.perf_counter()

    def settled() -> None:
        nonlocal pending
        pending -= 1
        if pending == 0:
            everyone_open.set()

    async def one(i: int, index: int, order_id: str, token: str) -> None:
        nonlocal opened
        stub = tracking_service_pb2_grpc.TrackingServiceStub(channels[i // STREAMS_PER_CHANNEL])
        await gate.acquire()
        released = False
        call = stub.TrackOrder(
            tracking_service_pb2.TrackOrderRequest(order_id=order_id), metadata=bearer(token)
        )
        try:
            async for update in call:
                if not released:
                    released = True
                    gate.release()
                    opened += 1
                    open_times.append(time.perf_counter() - started)
                    settled()
                kind = update.WhichOneof("update")
                if kind == "courier_position":
                    now = time.time()
                    ft = update.courier_position.fix_time
                    recv_at.append(now)
                    lags.append(now * 1000 - (ft.seconds * 1000 + ft.nanos // 1_000_000))
                    seen_orders.add(index)
                else:
                    kinds[kind] += 1
        except grpc.aio.AioRpcError as exc:
            failed[f"{exc.code().name}: {exc.details()}"[:90]] += 1
        finally:
            if not released:
                gate.release()
                settled()

    async def probe(driver: str) -> None:
        stub = location_service_pb2_grpc.LocationServiceStub(probe_channel)
        call = stub.WatchDriverLocation(
            location_service_pb2.WatchDriverLocationRequest(
                driver_id=driver, min_interval_duration=duration_pb2.Duration()
            ),
            metadata=bearer(service_token(SECRET_IN_CHILD, "tracking")),
        )
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for response in call:
                now = time.time()
                ft = response.location.fix_time
                probe_at.append(now)
                probe_lags.append(now * 1000 - (ft.seconds * 1000 + ft.nanos // 1_000_000))

    probe_channel = grpc.aio.insecure_channel(location_target) if probes else None
    tasks = [asyncio.create_task(one(i, *s)) for i, s in enumerate(streams)]
    tasks += [asyncio.create_task(probe(d)) for d in probes]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(everyone_open.wait(), open_s)
    conn.send(("open", opened, len(streams) - opened, max(open_times, default=0.0)))
    _collector_as_services()
    await _recv(conn)  # stop
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()
    if probe_channel is not None:
        await probe_channel.close()
    conn.send(
        (
            "done",
            recv_at.tobytes(),
            lags.tobytes(),
            probe_at.tobytes(),
            probe_lags.tobytes(),
            sorted(seen_orders),
            dict(kinds),
            dict(failed),
        )
    )


#: The service secret, handed to each child process (``bench.location`` makes a new one each
#: time it is imported).
SECRET_IN_CHILD = SECRET


def watch_process(
    conn: Any,
    secret: str,
    target: str,
    streams: list,
    probes: list,
    location_target: str,
    open_s: float,
) -> None:
    global SECRET_IN_CHILD
    SECRET_IN_CHILD = secret
    _run(_watch, conn, target, streams, probes, location_target, open_s)


class BareFanout(
    location_service_pb2_grpc.LocationServiceServicer,
    tracking_service_pb2_grpc.TrackingServiceServicer,
):
    """The baseline: StreamLocation in, each fix pushed as a courier_position to every
    TrackOrder stream of the courier's order through a queue per stream; no auth, no store."""

    def __init__(self, order_driver: dict[str, str], token_driver: dict[str, str]) -> None:
        self._order_driver = order_driver
        self._token_driver = token_driver
        self._queues: dict[str, list[asyncio.Queue]] = collections.defaultdict(list)

    async def StreamLocation(self, request_iterator, context):  # type: ignore[no-untyped-def]
        token = dict(context.invocation_metadata())["authorization"].split()[-1]
        queues = self._queues[self._token_driver[token]]
        count = 0
        async for request in request_iterator:
            count += 1
            fix = request.fix
            update = tracking_service_pb2.TrackOrderResponse(
                sequence=count,
                event_time=fix.device_time,
                courier_position=tracking_pb2.CourierPosition(
                    position=fix.position, fix_time=fix.device_time
                ),
            )
            for queue in queues:
                queue.put_nowait(update)
            if count % 100 == 0:
                yield location_service_pb2.StreamLocationResponse(acked_sequence=count)

    async def TrackOrder(self, request, context):  # type: ignore[no-untyped-def]
        queue: asyncio.Queue = asyncio.Queue()
        queues = self._queues[self._order_driver[request.order_id]]
        queues.append(queue)
        try:
            # As tracking_svc's snapshot: the first message tells the client it is open.
            yield tracking_service_pb2.TrackOrderResponse(
                status_update=tracking_pb2.OrderStatusUpdate(
                    status=common_pb2.ORDER_STATUS_PREPARING, version=1
                )
            )
            while True:
                yield await queue.get()
        finally:
            queues.remove(queue)


def bare_process(conn: Any, order_driver: dict[str, str], token_driver: dict[str, str]) -> None:
    async def main() -> None:
        # The mesh's server options (max concurrent streams per connection and all).
        server = grpc.aio.server(options=ServerSettings().server_options())
        bare = BareFanout(order_driver, token_driver)
        location_service_pb2_grpc.add_LocationServiceServicer_to_server(bare, server)
        tracking_service_pb2_grpc.add_TrackingServiceServicer_to_server(bare, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        gc.collect()
        gc.freeze()
        gc.set_threshold(DEFAULT_GC_THRESHOLD, *gc.get_threshold()[1:])
        conn.send(port)
        await server.wait_for_termination()

    _run(main)


# --- the orchestration ----------------------------------------------------------------------


class Child:
    """A child process with a pipe to it."""

    ctx = multiprocessing.get_context("spawn")

    def __init__(self, target: Callable[..., None], *args: Any) -> None:
        self.conn, theirs = self.ctx.Pipe()
        self.process = self.ctx.Process(target=target, args=(theirs, *args), daemon=True)
        self.process.start()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    async def recv(self, wait_s: float = 600.0) -> Any:
        loop = asyncio.get_running_loop()
        ready = await loop.run_in_executor(None, self.conn.poll, wait_s)
        if not ready:
            raise RuntimeError(f"{self.process.name} said nothing for {wait_s:.0f} s")
        return self.conn.recv()

    def send(self, message: Any) -> None:
        self.conn.send(message)

    async def end(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
        await asyncio.get_running_loop().run_in_executor(None, self.process.join, 10)


class Cpu:
    """CPU seconds of named processes (and Redis, from INFO) between marks."""

    def __init__(self, pids: dict[str, int], redis_url: str) -> None:
        self.pids = pids
        self.redis_url = redis_url

    async def mark(self) -> dict[str, float]:
        out = {}
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError):
                out[name] = _cpu_s(pid)
        client = redis.asyncio.Redis.from_url(self.redis_url)
        info = await client.info("cpu")
        await client.aclose()
        out["redis"] = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        # Every process's busy time: what is not ours above is someone else's load (the
        # machine is shared; its tests and benches show up here).
        stat = Path("/proc/stat").read_text()  # noqa: ASYNC240 (a pseudo-file)
        busy = stat.split("\n", 1)[0].split()[1:]
        ticks = sum(int(x) for i, x in enumerate(busy) if i not in (3, 4))  # not idle, iowait
        out["_machine"] = ticks / os.sysconf("SC_CLK_TCK")
        return out


def _arrays(blobs: list[tuple[bytes, bytes]]) -> tuple[array.array, array.array]:
    at, lag = array.array("d"), array.array("f")
    for a, b in blobs:
        at.frombytes(a)
        lag.frombytes(b)
    return at, lag


async def phase(
    target: str,
    world: dict[str, Any],
    args: argparse.Namespace,
    *,
    windows: list[tuple[str, Callable[[], Any] | None]],
    pids: dict[str, int],
    location_target: str = "",
) -> dict[str, Any]:
    """Couriers stream to ``location_target`` (to ``target`` if none), watchers watch
    ``target``; one measuring window per entry of ``windows`` (with a callable started before
    it, such as other drivers' load)."""
    gps = Child(gps_process, location_target or target, world["couriers"], 1.0)
    await gps.recv()
    await asyncio.sleep(3.0)  # every courier has sent a fix or two
    streams = [
        (index, order_id, world["watchers"][index][j % 5])
        for index, order_id in enumerate(world["orders"])
        for j in range(args.watchers_per_order)
    ]
    probes = [d for d, *_ in world["couriers"][:PROBES]] if location_target else []
    watchers = [
        Child(
            watch_process,
            SECRET,
            target,
            streams[k :: args.watch_processes],
            probes if k == 0 else [],
            location_target,
            args.open_timeout,
        )
        for k in range(args.watch_processes)
    ]
    t_open = time.perf_counter()
    opened = [await w.recv() for w in watchers]
    open_s = time.perf_counter() - t_open
    cpu = Cpu(
        {
            **pids,
            "couriers' GPS": gps.pid,
            **{f"watchers {k + 1}": w.pid for k, w in enumerate(watchers)},
        },
        args.redis_url,
    )
    await asyncio.sleep(args.warmup)
    results: dict[str, Any] = {"windows": []}
    extra: list[Child] = []
    for label, before in windows:
        if before is not None:
            child = await before()
            extra.append(child)
            cpu.pids["other drivers' GPS"] = child.pid
            await asyncio.sleep(args.warmup)
        start_cpu, t0 = await cpu.mark(), time.time()
        await asyncio.sleep(args.seconds)
        end_cpu, t1 = await cpu.mark(), time.time()
        used = {k: end_cpu[k] - start_cpu[k] for k in end_cpu if k in start_cpu}
        results["windows"].append((label, t0, t1, used))
    for child in extra:
        child.send("stop")
        results.setdefault("other", []).append(await child.recv())
        await child.end()
    for w in watchers:
        w.send("stop")
    done = [await w.recv() for w in watchers]
    gps.send("stop")
    results["gps"] = await gps.recv()
    await gps.end()
    for w in watchers:
        await w.end()
    results["opened"] = sum(o[1] for o in opened)
    results["failed_open"] = sum(o[2] for o in opened)
    results["open_s"] = open_s
    results["at"], results["lags"] = _arrays([(d[1], d[2]) for d in done])
    results["probe_at"], results["probe_lags"] = _arrays([(d[3], d[4]) for d in done])
    results["seen_orders"] = len({i for d in done for i in d[5]})
    results["kinds"] = sum((collections.Counter(d[6]) for d in done), collections.Counter())
    results["failed"] = sum((collections.Counter(d[7]) for d in done), collections.Counter())
    return results


async def plan_route_times(target: str, token: str, rounds: int) -> dict[int, list[float]] | str:
    """PlanRoute RPC times for 10 and 20 stops (half pickups, half their dropoffs)."""
    channel = grpc.aio.insecure_channel(target)
    stub = tracking_service_pb2_grpc.TrackingServiceStub(channel)
    rnd = random.Random(7)
    out: dict[int, list[float]] = {}
    try:
        for n in (10, 20):
            out[n] = []
            for _ in range(rounds):
                stops = []
                for k in range(n // 2):
                    order = str(uuid.uuid4())
                    for kind in (tracking_pb2.STOP_KIND_PICKUP, tracking_pb2.STOP_KIND_DROPOFF):
                        lat, lng = spot(rnd)
                        stops.append(
                            tracking_pb2.RouteStop(
                                stop_id=f"{kind}-{k}",
                                order_id=order,
                                kind=kind,
                                location=common_pb2.LatLng(latitude=lat, longitude=lng),
                                service_duration=duration_pb2.Duration(seconds=120),
                            )
                        )
                lat, lng = spot(rnd)
                request = tracking_service_pb2.PlanRouteRequest(
                    start=common_pb2.LatLng(latitude=lat, longitude=lng), stops=stops
                )
                t0 = time.perf_counter()
                await stub.PlanRoute(request, metadata=bearer(token), timeout=30)
                out[n].append(time.perf_counter() - t0)
    except grpc.aio.AioRpcError as exc:
        return f"not measured yet: PlanRoute answers {exc.code().name} ({exc.details()})"
    finally:
        await channel.close()
    return out


def _report(label: str, results: dict[str, Any], window: int, orders: int) -> tuple[float, float]:
    _, t0, t1, used = results["windows"][window]
    samples = [lag for at, lag in zip(results["at"], results["lags"], strict=True) if t0 <= at < t1]
    rate = len(samples) / (t1 - t0)
    if samples:
        print(
            f"  {label:<34} lag p50 {quantile(samples, 0.5):6.1f} ms  p99 "
            f"{quantile(samples, 0.99):7.1f} ms  max {max(samples):7.1f} ms   "
            f"delivered {rate:8.0f} positions/s"
        )
    else:
        print(f"  {label:<34} no positions delivered")
    probes = [
        lag
        for at, lag in zip(results["probe_at"], results["probe_lags"], strict=True)
        if t0 <= at < t1
    ]
    if probes:
        print(
            f"    of which fix -> location_svc WatchDriverLocation ({PROBES} couriers watched "
            f"directly): p50 {quantile(probes, 0.5):6.1f} ms  p99 {quantile(probes, 0.99):7.1f} ms"
        )
    machine = used.pop("_machine", 0.0)
    ours = sum(used.values())
    print(
        "    CPU s over the window: "
        + ", ".join(f"{k} {v:.1f}" for k, v in used.items())
        + f"; anything else on the machine {max(0.0, machine - ours):.1f}"
        + f"  (of {(t1 - t0) * (os.cpu_count() or 1):.0f} core-s)"
    )
    return quantile(samples, 0.99) if samples else float("inf"), rate


async def run(args: argparse.Namespace) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    name = f"delivery_bench_{uuid.uuid4().hex[:8]}"
    database_url = f"{args.database_url.rpartition('/')[0]}/{name}"
    await migrate(database_url)
    scratch = redis.asyncio.Redis.from_url(args.redis_url)
    await scratch.flushdb()
    processes: list[asyncio.subprocess.Process] = []
    try:
        rnd = random.Random(args.seed)
        others = args.other_rate if args.other_rate > 0 else 0
        world = await make_world(database_url, args.redis_url, args.orders, int(others), rnd)
        env = {
            "DELIVERY_DATABASE_URL": database_url,
            "DELIVERY_REDIS_URL": args.redis_url,
            "DELIVERY_SERVICE_SECRET": SECRET,
            "DELIVERY_LOG_LEVEL": "WARNING",
        }
        location_env = {**env, "DELIVERY_LOCATION_LISTEN": "127.0.0.1:0"}
        if args.location_max_streams:
            location_env["DELIVERY_MAX_CONCURRENT_STREAMS"] = str(args.location_max_streams)
        location, ports = await spawn([sys.executable, "-m", "location_svc"], location_env)
        processes.append(location)
        location_target = f"127.0.0.1:{ports['location']}"
        tracking_env = {
            **env,
            "DELIVERY_TRACKING_LISTEN": "127.0.0.1:0",
            "DELIVERY_LOCATION_ADDR": location_target,
        }
        if args.position_interval:
            tracking_env["DELIVERY_TRACKING_POSITION_INTERVAL_S"] = str(args.position_interval)
        tracking, served = await spawn([sys.executable, "-m", "tracking_svc"], tracking_env)
        processes.append(tracking)
        tracking_target = f"127.0.0.1:{served['tracking']}"
        pids = {"location_svc": location.pid, "tracking_svc": tracking.pid}

        async def city() -> Child:
            child = Child(gps_process, location_target, world["others"], 1.0)
            await child.recv()
            return child

        windows: list[tuple[str, Callable[[], Any] | None]] = [("alone", None)]
        if others:
            windows.append(("city", city))
        started = time.perf_counter()
        live = await phase(
            tracking_target,
            world,
            args,
            windows=windows,
            pids=pids,
            location_target=location_target,
        )
        routes = await plan_route_times(
            tracking_target, service_token(SECRET, "matching"), args.route_rounds
        )
        for process in reversed(processes):
            process.terminate()
            await process.wait()
        processes.clear()

        order_driver = {o: c[0] for o, c in zip(world["orders"], world["couriers"], strict=True)}
        token_driver = {c[1]: c[0] for c in world["couriers"]}
        bare = Child(bare_process, order_driver, token_driver)
        bare_target = f"127.0.0.1:{await bare.recv()}"
        try:
            base = await phase(
                bare_target, world, args, windows=[("alone", None)], pids={"bare": bare.pid}
            )
        finally:
            await bare.end()
        elapsed = time.perf_counter() - started

        streams = args.orders * args.watchers_per_order
        print(
            f"tracking fan-out, {args.orders} orders x {args.watchers_per_order} TrackOrder "
            f"watchers = {streams} streams, {args.orders} couriers at 1 fix/s, "
            f"{args.watch_processes} watcher processes + 1 GPS process, {args.seconds:.0f} s "
            f"windows, {os.cpu_count()} cores, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
        )
        if args.position_interval or args.location_max_streams:
            print(
                "  NOT the defaults: "
                + (
                    f"tracking_svc position interval {args.position_interval} s "
                    * bool(args.position_interval)
                )
                + (
                    f"location_svc max concurrent streams {args.location_max_streams}"
                    * bool(args.location_max_streams)
                )
            )
        for label, res in (("tracking_svc", live), ("bare fan-out", base)):
            print(
                f"  {label}: streams opened {res['opened']} of {streams} in "
                f"{res['open_s']:.1f} s, not opened {res['failed_open']}, ended with an error "
                f"{dict(res['failed']) or 0}; orders whose watchers saw the courier "
                f"{res['seen_orders']} of {args.orders}; other updates {dict(res['kinds'])}"
            )
            gps_errors = res["gps"][2]
            if gps_errors:
                print(f"    courier GPS stream errors {gps_errors}")
        p99, rate = _report("tracking_svc (alone)", live, 0, args.orders)
        _, brate = _report("bare fan-out", base, 0, args.orders)
        offered = args.orders * args.watchers_per_order
        print(
            f"  delivered ratio tracking / bare       {rate / brate if brate else 0:7.2f}   "
            f"(target >= 0.5; each is capped by the {offered} positions/s offered)"
        )
        print(
            f"  lag p99 tracking_svc                  {p99:7.1f} ms   (target <= 100 ms: "
            f"{'met' if p99 <= 100 else 'missed'})"
        )
        if others:
            sent = live["other"][0][1]
            _, t0, t1, _ = live["windows"][1]
            other_rate = sum(v for s, v in sent.items() if int(t0) <= s < int(t1)) / max(
                1, int(t1) - int(t0)
            )
            _report(f"tracking_svc + {other_rate:.0f} other fixes/s", live, 1, args.orders)
            if live["other"][0][2]:
                print(f"    other drivers' stream errors {live['other'][0][2]}")
        if isinstance(routes, str):
            print(f"  PlanRoute                             {routes}")
        else:
            for n, times in routes.items():
                print(
                    f"  PlanRoute {n:2d} stops (RPC, idle mesh)   p50 "
                    f"{quantile(times, 0.5) * 1000:7.1f} ms   p99 "
                    f"{quantile(times, 0.99) * 1000:7.1f} ms   ({len(times)} calls)"
                )
        print(f"  ({elapsed:.0f} s for the three phases)")
        print("reproduce: .venv/bin/python bench/tracking.py " + " ".join(sys.argv[1:]))
    finally:
        for process in reversed(processes):
            process.terminate()
            await process.wait()
        await scratch.flushdb()
        await scratch.aclose()
        admin = await asyncpg.connect(args.database_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--watchers-per-order", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=20.0, help="each measuring window")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument(
        "--other-rate",
        type=float,
        default=5000.0,
        help="fixes/s of other drivers (1 fix/s each) in the second window; 0 skips it",
    )
    parser.add_argument("--watch-processes", type=int, default=2)
    parser.add_argument("--open-timeout", type=float, default=120.0)
    parser.add_argument("--route-rounds", type=int, default=50)
    parser.add_argument(
        "--location-max-streams",
        type=int,
        default=0,
        help="DELIVERY_MAX_CONCURRENT_STREAMS for location_svc (0: its default)",
    )
    parser.add_argument(
        "--position-interval",
        type=float,
        default=0.0,
        help="DELIVERY_TRACKING_POSITION_INTERVAL_S for tracking_svc (0: its default, 1 s)",
    )
    parser.add_argument("--quick", action="store_true", help="200 orders, 500 other fixes/s, 10 s")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--database-url", default=os.environ.get("DELIVERY_DATABASE_URL", DEFAULT_PG)
    )
    parser.add_argument(
        "--redis-url",
        default=DEFAULT_REDIS,
        help="a Redis database for the bench alone: it is emptied before and after",
    )
    args = parser.parse_args()
    if args.redis_url.rstrip("/").endswith("/0") or "/" not in args.redis_url.split("//", 1)[1]:
        parser.error("--redis-url must name a database of its own (it is emptied), not 0")
    if args.quick:
        args.orders, args.other_rate, args.seconds, args.route_rounds = 200, 500.0, 10.0, 10
    _run(run, args)


if __name__ == "__main__":
    main()
