"""Order placement: CreateOrder end to end over gRPC against the same transaction in bare asyncpg.

Both run in one invocation on the same machine and database server, so their ratio means
something even on a shared, noisy box. Prints the closed-loop rates and their ratio, then the
latency of an open-loop run at a fixed rate.

    .venv/bin/python bench/orders.py [--seconds 10] [--concurrency 64] [--clients 2]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
from google.protobuf import duration_pb2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from delivery.common.v1 import common_pb2
from delivery.order.v1 import (
    account_service_pb2,
    account_service_pb2_grpc,
    merchant_pb2,
    merchant_service_pb2,
    merchant_service_pb2_grpc,
    order_pb2,
    order_service_pb2,
    order_service_pb2_grpc,
)
from mesh.migrate import migrate
from mesh.settings import StoreSettings
from mesh.stores import db_pool
from mesh.testing import bearer, spawn
from order_svc.domain.pricing import PricedLine, PricedOption, PricedOrder
from order_svc.store.orders import (
    Event,
    NotificationDraft,
    OrderStore,
    PriceVersion,
)

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def eur(amount: int) -> common_pb2.Money:
    return common_pb2.Money(currency_code="EUR", amount_minor=amount)


async def setup_market(target: str, customers: int) -> dict[str, object]:
    """A merchant with a pizza and ``customers`` signed-in customers; returns what clients need."""
    async with grpc.aio.insecure_channel(target) as channel:
        accounts = account_service_pb2_grpc.AccountServiceStub(channel)
        merchants = merchant_service_pb2_grpc.MerchantServiceStub(channel)

        async def sign_up(role: int) -> tuple[str, str]:
            reply = await accounts.SignUp(
                account_service_pb2.SignUpRequest(
                    email=f"bench-{uuid.uuid4().hex[:12]}@example.com",
                    password="password123",
                    name="Bench",
                    role=role,
                )
            )
            return reply.user.user_id, reply.session_token

        owner_id, owner_token = await sign_up(common_pb2.ROLE_MERCHANT)
        owner = bearer(owner_token)
        location = common_pb2.LatLng(latitude=52.52, longitude=13.405)
        shop = (
            await merchants.CreateMerchant(
                merchant_service_pb2.CreateMerchantRequest(
                    request_id=uuid.uuid4().hex,
                    name="Bench Pizza",
                    address="Alexanderplatz 1",
                    location=location,
                    delivery_radius_meters=8000,
                    average_prep_duration=duration_pb2.Duration(seconds=900),
                    currency_code="EUR",
                ),
                metadata=owner,
            )
        ).merchant
        await merchants.SetMerchantOpen(
            merchant_service_pb2.SetMerchantOpenRequest(
                request_id=uuid.uuid4().hex, merchant_id=shop.merchant_id, open=True
            ),
            metadata=owner,
        )
        item = (
            await merchants.UpsertMenuItem(
                merchant_service_pb2.UpsertMenuItemRequest(
                    request_id=uuid.uuid4().hex,
                    merchant_id=shop.merchant_id,
                    menu_item=merchant_pb2.MenuItem(
                        name="Margherita",
                        price=eur(900),
                        available=True,
                        option_groups=[
                            merchant_pb2.OptionGroup(
                                name="Size",
                                min_select=1,
                                max_select=1,
                                options=[
                                    merchant_pb2.Option(name="M", available=True),
                                    merchant_pb2.Option(
                                        name="L", price_delta=eur(250), available=True
                                    ),
                                ],
                            )
                        ],
                    ),
                ),
                metadata=owner,
            )
        ).menu_item
        people = await asyncio.gather(
            *(sign_up(common_pb2.ROLE_CUSTOMER) for _ in range(customers))
        )
    size = item.option_groups[0]
    return {
        "merchant_id": shop.merchant_id,
        "owner_id": owner_id,
        "item_id": item.menu_item_id,
        "group_id": size.option_group_id,
        "option_id": size.options[1].option_id,
        "customers": [(uid, token) for uid, token in people],
    }


def order_request(market: dict[str, object]) -> order_service_pb2.CreateOrderRequest:
    """A fresh order (new request id) of two large pizzas, 1.5 km north of the shop."""
    return order_service_pb2.CreateOrderRequest(
        request_id=uuid.uuid4().hex,
        merchant_id=str(market["merchant_id"]),
        items=[
            order_pb2.OrderItemInput(
                menu_item_id=str(market["item_id"]),
                quantity=2,
                options=[
                    order_pb2.OptionChoice(
                        option_group_id=str(market["group_id"]),
                        option_id=str(market["option_id"]),
                    )
                ],
            )
        ],
        delivery_address="Karl-Marx-Allee 5",
        delivery_location=common_pb2.LatLng(latitude=52.5335, longitude=13.405),
        tip=eur(100),
    )


async def grpc_closed_loop(
    target: str, market: dict[str, object], concurrency: int, seconds: float
) -> tuple[int, int, float]:
    """``concurrency`` callers placing orders back to back; returns (ok, errors, elapsed)."""
    customers = list(market["customers"])  # type: ignore[call-overload]
    channels = [grpc.aio.insecure_channel(target) for _ in range(4)]
    stubs = [order_service_pb2_grpc.OrderServiceStub(c) for c in channels]
    ok = errors = 0
    deadline = time.perf_counter() + seconds

    async def caller(i: int) -> None:
        nonlocal ok, errors
        stub = stubs[i % len(stubs)]
        metadata = bearer(customers[i % len(customers)][1])
        while time.perf_counter() < deadline:
            try:
                await stub.CreateOrder(order_request(market), metadata=metadata, timeout=10)
                ok += 1
            except grpc.aio.AioRpcError:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    for channel in channels:
        await channel.close()
    return ok, errors, elapsed


def _client_process(
    target: str, market: dict[str, object], concurrency: int, seconds: float, out: object
) -> None:
    result = asyncio.run(grpc_closed_loop(target, market, concurrency, seconds))
    out.put(result)  # type: ignore[attr-defined]


def grpc_load(
    target: str, market: dict[str, object], concurrency: int, seconds: float, clients: int
) -> tuple[float, int]:
    """Closed-loop load from ``clients`` processes; returns (orders/s, errors)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(
            target=_client_process,
            args=(target, market, max(1, concurrency // clients), seconds, queue),
        )
        for _ in range(clients)
    ]
    for proc in procs:
        proc.start()
    results = [queue.get() for _ in procs]
    for proc in procs:
        proc.join()
    ok = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    elapsed = max(r[2] for r in results)
    return ok / elapsed, errors


async def asyncpg_closed_loop(
    database_url: str, market: dict[str, object], concurrency: int, seconds: float
) -> float:
    """The same placement statement (key, order, lines, history, outbox, notifications) in bare
    asyncpg, with the same concurrency; returns orders/s."""
    # The pool the services use (same size, same reset policy), so only the path differs.
    pool_cm = db_pool(StoreSettings(database_url=database_url, db_pool_min=20, db_pool_max=20))
    pool = await pool_cm.__aenter__()
    store = OrderStore(pool)
    customers = list(market["customers"])  # type: ignore[call-overload]
    line = PricedLine(
        menu_item_id=str(market["item_id"]),
        name="Margherita",
        quantity=2,
        unit_price_minor=900,
        options=(
            PricedOption(str(market["group_id"]), str(market["option_id"]), "Size", "L", 250),
        ),
        line_total_minor=2300,
        note="",
    )
    priced = PricedOrder((line,), "EUR", 2300, 259, 100, 2659, 1500.0)
    # The statement checks the menu versions the order was priced from, as the service does.
    merchant_at = await pool.fetchval(
        "SELECT menu_version FROM merchants WHERE id = $1::uuid", market["merchant_id"]
    )
    item_at = await pool.fetchval(
        "SELECT updated_at FROM menu_items WHERE id = $1::uuid", market["item_id"]
    )
    version = PriceVersion(merchant_at, ((str(market["item_id"]), item_at),))
    payload = b"x" * 420  # about the size of a serialized CreateOrderResponse
    done = 0
    deadline = time.perf_counter() + seconds

    async def caller(i: int) -> None:
        nonlocal done
        customer_id = customers[i % len(customers)][0]
        while time.perf_counter() < deadline:
            now = datetime.now(UTC)
            await store.create(
                order_id=str(uuid.uuid4()),
                customer_id=customer_id,
                merchant_id=str(market["merchant_id"]),
                request_id=uuid.uuid4().hex,
                request_hash=os.urandom(32),
                response=payload,
                priced=priced,
                delivery_address="Karl-Marx-Allee 5",
                delivery_lat=52.5335,
                delivery_lng=13.405,
                delivery_pin="1234",
                handoff_policy="pin",
                estimated_prep_seconds=900,
                estimated_delivery_at=now + timedelta(minutes=20),
                note="",
                now=now,
                event=Event("order.created", payload[:200]),
                notifications=[
                    NotificationDraft(customer_id, "order_placed", "New order", "..."),
                    NotificationDraft(str(market["owner_id"]), "order_placed", "New order", "..."),
                ],
                key_ttl_s=86400,
                priced_from=version,
            )
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    await pool_cm.__aexit__(None, None, None)
    return done / elapsed


async def open_loop(
    target: str, market: dict[str, object], rate: float, seconds: float
) -> tuple[list[float], int, float]:
    """Sends at ``rate`` per second whatever the replies do; returns latencies (ms), errors,
    and the achieved send rate."""
    customers = list(market["customers"])  # type: ignore[call-overload]
    channels = [grpc.aio.insecure_channel(target) for _ in range(4)]
    stubs = [order_service_pb2_grpc.OrderServiceStub(c) for c in channels]
    latencies: list[float] = []
    errors = 0
    tasks: list[asyncio.Task[None]] = []

    async def one(i: int) -> None:
        nonlocal errors
        request = order_request(market)
        metadata = bearer(customers[i % len(customers)][1])
        started = time.perf_counter()
        try:
            await stubs[i % len(stubs)].CreateOrder(request, metadata=metadata, timeout=10)
            latencies.append((time.perf_counter() - started) * 1000)
        except grpc.aio.AioRpcError:
            errors += 1

    total = int(rate * seconds)
    start = time.perf_counter()
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    sent_rate = total / (time.perf_counter() - start)
    await asyncio.gather(*tasks)
    for channel in channels:
        await channel.close()
    return latencies, errors, sent_rate


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--clients", type=int, default=2, help="load-generator processes")
    parser.add_argument("--customers", type=int, default=32)
    parser.add_argument("--open-rate", type=float, default=500.0, help="open-loop orders/s")
    parser.add_argument(
        "--database-url", default=os.environ.get("DELIVERY_TEST_DATABASE_URL", DEFAULT_PG)
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("DELIVERY_TEST_REDIS_URL", DEFAULT_REDIS)
    )
    args = parser.parse_args()

    name = f"delivery_bench_{uuid.uuid4().hex[:8]}"
    base, _, _ = args.database_url.rpartition("/")
    database_url = f"{base}/{name}"
    await migrate(database_url)
    process, ports = await spawn(
        [sys.executable, "-m", "order_svc"],
        {
            "DELIVERY_DATABASE_URL": database_url,
            "DELIVERY_REDIS_URL": args.redis_url,
            "DELIVERY_ORDER_LISTEN": "127.0.0.1:0",
            "DELIVERY_ORDER_RELAY": "0",
            "DELIVERY_DB_POOL_MAX": "20",
            "DELIVERY_LOG_LEVEL": "WARNING",
        },
    )
    target = f"127.0.0.1:{ports['order']}"
    try:
        market = await setup_market(target, args.customers)
        # Warm both paths (statement caches, connections) before measuring.
        grpc_load(target, market, args.concurrency, 2.0, args.clients)
        await asyncpg_closed_loop(database_url, market, args.concurrency, 2.0)

        baseline = await asyncpg_closed_loop(database_url, market, args.concurrency, args.seconds)
        counter = await asyncpg.connect(database_url)
        before = await counter.fetchval("SELECT count(*) FROM orders")
        rate, errors = grpc_load(target, market, args.concurrency, args.seconds, args.clients)
        # Every acknowledged order is in the database, with its outbox event.
        written = await counter.fetchval("SELECT count(*) FROM orders") - before
        events = await counter.fetchval(
            "SELECT count(*) FROM outbox WHERE event_type = 'order.created'"
        )
        orders_total = await counter.fetchval("SELECT count(*) FROM orders")
        await counter.close()
        latencies, open_errors, sent = await open_loop(target, market, args.open_rate, args.seconds)
    finally:
        process.terminate()
        await process.wait()
        admin = await asyncpg.connect(args.database_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

    print(
        f"order placement, {args.seconds:.0f} s each, concurrency {args.concurrency}, "
        f"{os.cpu_count()} cores, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    print(f"  bare asyncpg (same statement)   {baseline:8.0f} orders/s")
    print(
        f"  gRPC CreateOrder end to end     {rate:8.0f} orders/s   ({errors} errors, "
        f"{args.clients} client processes)"
    )
    print(f"  ratio gRPC / asyncpg            {rate / baseline:8.2f}")
    print(
        f"  orders written by the gRPC run  {written:8d}   (rate x time: "
        f"{rate * args.seconds:.0f}; every order has its event: {events == orders_total})"
    )
    if latencies:
        print(
            f"  open loop at {args.open_rate:.0f}/s (sent {sent:.0f}/s): p50 "
            f"{statistics.median(latencies):.1f} ms  p99 {pct(latencies, 0.99):.1f} ms  "
            f"max {max(latencies):.1f} ms  ({open_errors} errors)"
        )
    print("reproduce: .venv/bin/python bench/orders.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    asyncio.run(main())
