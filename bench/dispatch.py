"""Dispatch: from an order becoming dispatchable to the first offer on a courier's stream.

Starts location_svc and matching_svc as processes on a scratch database, then simulates
couriers: each streams a GPS fix every few seconds (StreamLocation) and keeps StreamOffers open,
accepting an offer for a pickup within 1.5 km nine times in ten and a farther one four times in
ten (declining otherwise). Orders (confirmed, from shops spread over the same area) become
dispatchable at a fixed rate, open loop: DispatchOrder, as order_svc sends it when an order's
time comes. Prints p50/p99 of the time from that call to the first offer for the order on any
courier's stream, against the candidate search alone (a FindNearbyDrivers call from the same
client, the baseline), and how many orders were matched on their first offer.

    .venv/bin/python bench/dispatch.py [--drivers 2000] [--rate 35] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import math
import os
import random
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import grpc
import redis.asyncio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.location import SECRET, _fix, make_drivers
from bench.nearby import quantile
from delivery.common.v1 import common_pb2
from delivery.location.v1 import location_service_pb2, location_service_pb2_grpc
from delivery.matching.v1 import matching_service_pb2, matching_service_pb2_grpc
from mesh.auth import service_token
from mesh.geo import EARTH_RADIUS_M, haversine_m
from mesh.migrate import migrate
from mesh.server import DEFAULT_GC_THRESHOLD
from mesh.testing import bearer, spawn

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
#: A Redis database of the bench's own, emptied before each run: the services' event streams,
#: consumer groups and geo index would otherwise meet the tests' (database 0).
DEFAULT_REDIS = "redis://127.0.0.1:6379/9"
CENTER = (48.137, 11.575)  # Munich
SIDE_KM = 8.0
STREAMS_PER_CHANNEL = 100


def spot(rnd: random.Random) -> tuple[float, float]:
    half = SIDE_KM * 500.0
    dlat = math.degrees(half / EARTH_RADIUS_M)
    dlng = math.degrees(half / (EARTH_RADIUS_M * math.cos(math.radians(CENTER[0]))))
    return CENTER[0] + rnd.uniform(-dlat, dlat), CENTER[1] + rnd.uniform(-dlng, dlng)


async def make_orders(database_url: str, n: int, rnd: random.Random) -> list[tuple[str, tuple]]:
    """``n`` confirmed orders, each from a shop of its own somewhere in the area."""
    conn = await asyncpg.connect(database_url)
    try:
        people = [str(uuid.uuid4()) for _ in range(2 * n)]
        await conn.executemany(
            "INSERT INTO users (id, email, password_hash, name, role)"
            " VALUES ($1::uuid, $2, 'x', 'Bench', $3)",
            [
                (p, f"b-{p}@example.com", "customer" if i % 2 else "merchant")
                for i, p in enumerate(people)
            ],
        )
        orders = []
        rows_m, rows_o = [], []
        for i in range(n):
            owner, customer = people[2 * i], people[2 * i + 1]
            merchant, order = str(uuid.uuid4()), str(uuid.uuid4())
            lat, lng = spot(rnd)
            rows_m.append((merchant, owner, lat, lng))
            rows_o.append((order, customer, merchant, lat + 0.01, lng))
            orders.append((order, (lat, lng)))
        await conn.executemany(
            "INSERT INTO merchants (id, owner_user_id, name, address, lat, lng)"
            " VALUES ($1::uuid, $2::uuid, 'Shop', '1 Main St', $3, $4)",
            rows_m,
        )
        await conn.executemany(
            "INSERT INTO orders (id, customer_id, merchant_id, status, delivery_address,"
            " delivery_lat, delivery_lng, currency_code, subtotal_minor, total_minor, confirmed_at)"
            " VALUES ($1::uuid, $2::uuid, $3::uuid, 'confirmed', '2 Side St', $4, $5, 'EUR',"
            " 1000, 1000, now())",
            rows_o,
        )
        return orders
    finally:
        await conn.close()


class Couriers:
    """The simulated couriers: GPS streams and offer streams, answering offers."""

    def __init__(self, drivers, location_target, matching_target, rnd, shops) -> None:  # type: ignore[no-untyped-def]
        self.drivers = drivers
        self.rnd = rnd
        self.shops = shops
        self.positions = {d: spot(rnd) for d, _ in drivers}
        self.first_offer: dict[str, float] = {}
        #: Set once every order has had an offer.
        self.everyone = asyncio.Event()
        self.offers_seen = 0
        #: Offer streams that ended early and were opened again, by status code.
        self.reconnects: collections.Counter[str] = collections.Counter()
        self.answers: list[asyncio.Task] = []
        self._stop = asyncio.Event()
        groups = range(0, len(drivers), STREAMS_PER_CHANNEL)
        options = [("grpc.use_local_subchannel_pool", 1)]
        self.location_channels = [
            grpc.aio.insecure_channel(location_target, options=options) for _ in groups
        ]
        self.matching_channels = [
            grpc.aio.insecure_channel(matching_target, options=options) for _ in groups
        ]
        self.tasks: list[asyncio.Task] = []

    def start(self) -> None:
        for i, (driver, token) in enumerate(self.drivers):
            c = i // STREAMS_PER_CHANNEL
            location = location_service_pb2_grpc.LocationServiceStub(self.location_channels[c])
            matching = matching_service_pb2_grpc.MatchingServiceStub(self.matching_channels[c])
            self.tasks.append(asyncio.create_task(self._gps(location, driver, token)))
            self.tasks.append(asyncio.create_task(self._offers(matching, driver, token)))

    async def _gps(self, stub, driver: str, token: str) -> None:  # type: ignore[no-untyped-def]
        rnd = random.Random(driver)
        lat, lng = self.positions[driver]

        async def fixes():  # type: ignore[no-untyped-def]
            seq = 0
            await asyncio.sleep(rnd.random() * 2)
            while not self._stop.is_set():
                seq += 1
                yield _fix(lat + seq * 1e-6, lng, int(time.time() * 1000), seq)
                await asyncio.sleep(3.0)

        call = stub.StreamLocation(fixes(), metadata=bearer(token))
        try:
            async for _ in call:
                pass
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass

    async def _offers(self, stub, driver: str, token: str) -> None:  # type: ignore[no-untyped-def]
        """The courier's offer stream, opened again after an error as the app would (a
        reconnecting app gets its pending offer again); every reconnection is counted."""
        while not self._stop.is_set():
            call = stub.StreamOffers(
                matching_service_pb2.StreamOffersRequest(), metadata=bearer(token)
            )
            try:
                async for message in call:
                    if message.WhichOneof("event") != "offer":
                        continue
                    self._offered(stub, driver, token, message.offer)
            except grpc.aio.AioRpcError as exc:
                if self._stop.is_set():
                    return
                self.reconnects[exc.code().name] += 1
                await asyncio.sleep(0.5)
            except asyncio.CancelledError:
                return

    def _offered(self, stub, driver: str, token: str, offer) -> None:  # type: ignore[no-untyped-def]
        now = time.perf_counter()
        self.offers_seen += 1
        self.first_offer.setdefault(offer.order_id, now)
        if len(self.first_offer) == len(self.shops):
            self.everyone.set()
        pickup = self.shops.get(offer.order_id)
        distance = haversine_m(*self.positions[driver], *pickup) if pickup else 0.0
        accept = self.rnd.random() < (0.9 if distance < 1_500 else 0.4)
        self.answers.append(asyncio.create_task(self._answer(stub, token, offer.offer_id, accept)))

    async def _answer(self, stub, token: str, offer_id: str, accept: bool) -> None:  # type: ignore[no-untyped-def]
        await asyncio.sleep(self.rnd.uniform(0.2, 1.0))  # a courier reads before tapping
        try:
            if accept:
                await stub.AcceptOffer(
                    matching_service_pb2.AcceptOfferRequest(offer_id=offer_id),
                    metadata=bearer(token),
                )
            else:
                await stub.DeclineOffer(
                    matching_service_pb2.DeclineOfferRequest(offer_id=offer_id),
                    metadata=bearer(token),
                )
        except grpc.aio.AioRpcError:
            pass  # expired meanwhile, say

    async def close(self) -> None:
        self._stop.set()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, *self.answers, return_exceptions=True)
        for channel in self.location_channels + self.matching_channels:
            await channel.close()


async def run(args: argparse.Namespace) -> None:
    name = f"delivery_bench_{uuid.uuid4().hex[:8]}"
    database_url = f"{args.database_url.rpartition('/')[0]}/{name}"
    await migrate(database_url)
    rnd = random.Random(args.seed)
    processes = []
    scratch = redis.asyncio.Redis.from_url(args.redis_url)
    await scratch.flushdb()
    await scratch.aclose()
    try:
        drivers = await make_drivers(database_url, args.redis_url, args.drivers)
        total = int(args.rate * args.seconds)
        orders = await make_orders(database_url, total, rnd)
        shops = dict(orders)
        env = {
            "DELIVERY_DATABASE_URL": database_url,
            "DELIVERY_REDIS_URL": args.redis_url,
            "DELIVERY_SERVICE_SECRET": SECRET,
            "DELIVERY_LOG_LEVEL": "WARNING",
        }
        location, ports = await spawn(
            [sys.executable, "-m", "location_svc"],
            {**env, "DELIVERY_LOCATION_LISTEN": "127.0.0.1:0"},
        )
        processes.append(location)
        location_target = f"127.0.0.1:{ports['location']}"
        matching, served = await spawn(
            [sys.executable, "-m", "matching_svc"],
            {
                **env,
                "DELIVERY_MATCHING_LISTEN": "127.0.0.1:0",
                "DELIVERY_LOCATION_ADDR": location_target,
                "DELIVERY_OFFER_TTL_S": "15",
                "DELIVERY_DISPATCH_TICK_S": "0.1",
            },
        )
        processes.append(matching)
        matching_target = f"127.0.0.1:{served['matching']}"
        couriers = Couriers(drivers, location_target, matching_target, rnd, shops)
        couriers.start()
        await asyncio.sleep(args.warmup)  # every courier has sent a fix and opened its offers
        # The load generator's own collector as the services' (mesh.server): its full
        # collections over thousands of streams would otherwise stall both measurements.
        gc.collect()
        gc.freeze()
        gc.set_threshold(DEFAULT_GC_THRESHOLD, *gc.get_threshold()[1:])

        service = bearer(service_token(SECRET, "order"))
        channel = grpc.aio.insecure_channel(matching_target)
        stub = matching_service_pb2_grpc.MatchingServiceStub(channel)
        location_channel = grpc.aio.insecure_channel(location_target)
        locator = location_service_pb2_grpc.LocationServiceStub(location_channel)
        matching_token = bearer(service_token(SECRET, "matching"))
        sent: dict[str, float] = {}
        searches: list[float] = []

        async def dispatch(order_id: str) -> None:
            sent[order_id] = time.perf_counter()
            await stub.DispatchOrder(
                matching_service_pb2.DispatchOrderRequest(order_id=order_id), metadata=service
            )

        async def search(lat: float, lng: float) -> None:
            t0 = time.perf_counter()
            await locator.FindNearbyDrivers(
                location_service_pb2.FindNearbyDriversRequest(
                    center=common_pb2.LatLng(latitude=lat, longitude=lng),
                    radius_meters=2_000,
                    limit=20,
                    # As dispatch asks: busy couriers too (they may take a stacked order).
                    include_busy=True,
                ),
                metadata=matching_token,
            )
            searches.append(time.perf_counter() - t0)

        started = time.perf_counter()
        calls = []
        for i, (order_id, (lat, lng)) in enumerate(orders):
            due = started + i / args.rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            calls.append(asyncio.create_task(dispatch(order_id)))
            # The baseline, interleaved at the same rate: the candidate search alone.
            calls.append(asyncio.create_task(search(lat, lng)))
        await asyncio.gather(*calls, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(couriers.everyone.wait(), 10)
        await asyncio.sleep(2)  # the last answers
        latencies = [couriers.first_offer[o] - sent[o] for o in sent if o in couriers.first_offer]
        await couriers.close()
        await channel.close()
        await location_channel.close()

        conn = await asyncpg.connect(database_url)
        first = await conn.fetchval(
            "SELECT count(*) FROM driver_offers WHERE attempt = 1 AND status = 'accepted'"
        )
        assigned = await conn.fetchval("SELECT count(*) FROM orders WHERE driver_id IS NOT NULL")
        await conn.close()

        def ms(samples: list[float], q: float) -> float:
            return quantile(samples, q) * 1000

        print(
            f"dispatch, {args.drivers} couriers streaming GPS (a fix every 3 s) in "
            f"{SIDE_KM:.0f} km x {SIDE_KM:.0f} km, {len(orders)} orders at {args.rate:.0f}/s "
            f"open loop, {os.cpu_count()} cores, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
        )
        print(f"  orders with an offer                    {len(latencies)} of {len(orders)}")
        print(
            f"  dispatchable -> first offer on stream   p50 {ms(latencies, 0.5):7.1f} ms   "
            f"p99 {ms(latencies, 0.99):7.1f} ms   (target p99 <= 100 ms)"
        )
        print(
            f"  baseline: FindNearbyDrivers alone       p50 {ms(searches, 0.5):7.1f} ms   "
            f"p99 {ms(searches, 0.99):7.1f} ms"
        )
        print(
            "  p99 ratio dispatch / search             "
            f"{quantile(latencies, 0.99) / quantile(searches, 0.99):7.1f}x"
        )
        print(
            f"  matched on the first offer              {first} of {len(orders)} "
            f"({first / len(orders):.0%}); assigned in all {assigned}"
        )
        if couriers.reconnects:
            # Seen now and then on this box: streams of the client ending CANCELLED while the
            # 2,000 open at once, before the server has them. An app opens its stream again.
            print(f"  offer streams opened again             {dict(couriers.reconnects)}")
        print("reproduce: .venv/bin/python bench/dispatch.py " + " ".join(sys.argv[1:]))
    finally:
        # matching_svc first: it calls location_svc until it stops.
        for process in reversed(processes):
            process.terminate()
            await process.wait()
        admin = await asyncpg.connect(args.database_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--drivers", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=35.0, help="orders per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds before the first order")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--database-url", default=os.environ.get("DELIVERY_DATABASE_URL", DEFAULT_PG)
    )
    parser.add_argument(
        "--redis-url",
        default=DEFAULT_REDIS,
        help="a Redis database for the bench alone: it is emptied first",
    )
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(run(args))
    else:
        uvloop.run(run(args))


if __name__ == "__main__":
    main()
