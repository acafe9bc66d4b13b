"""matching_svc killed with an offer pending: after a restart the offer expires on time and
dispatch goes on to the next courier. Real processes, a real SIGKILL."""

from __future__ import annotations

import asyncio
import math
import random
import secrets
import signal
import sys

import asyncpg
import grpc

from delivery.matching.v1 import matching_service_pb2, matching_service_pb2_grpc
from location_svc.store.geo_index import GeoIndex, IndexEntry, shard_of
from mesh import clock
from mesh.auth import service_token
from mesh.geo import EARTH_RADIUS_M
from mesh.settings import StoreSettings
from mesh.stores import Stores
from mesh.testing import bearer, spawn
from tests.integration.rows import courier, shop_order
from tests.polling import eventually

SECRET = secrets.token_hex(16)


async def _start(service: str, store_settings: StoreSettings, **env: str):  # type: ignore[no-untyped-def]
    return await spawn(
        [sys.executable, "-m", service],
        {
            "DELIVERY_DATABASE_URL": store_settings.database_url,
            "DELIVERY_REDIS_URL": store_settings.redis_url,
            "DELIVERY_SERVICE_SECRET": SECRET,
            "DELIVERY_GRACE_S": "1",
            **{f"DELIVERY_{k.upper()}": v for k, v in env.items()},
        },
    )


async def test_pending_offers_survive_a_killed_matching_svc(
    store_settings: StoreSettings, stores: Stores
) -> None:
    assert stores.pool is not None and stores.redis is not None
    pool, redis = stores.pool, stores.redis
    shop = (random.uniform(-50, 50), random.uniform(-170, 170))
    index = GeoIndex(redis)
    couriers, filed = [], []
    for metres in (200, 900):
        async with pool.acquire() as conn:
            driver = await courier(conn)
        lat = shop[0] + math.degrees(metres / EARTH_RADIUS_M)
        pipe = redis.pipeline(transaction=False)
        index.queue_upsert(pipe, IndexEntry(driver, lat, shop[1], "bicycle", clock.now_ms()), None)
        await pipe.execute()
        couriers.append(driver)
        filed.append((driver, shard_of(lat, shop[1])))
    order = (await shop_order(pool, "confirmed", shop=shop)).order

    location, ports = await _start("location_svc", store_settings, location_listen="127.0.0.1:0")
    matching_env = {
        "matching_listen": "127.0.0.1:0",
        "location_addr": f"127.0.0.1:{ports['location']}",
        "offer_ttl_s": "2",
        "dispatch_tick_s": "0.05",
    }
    matching, served = await _start("matching_svc", store_settings, **matching_env)
    try:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{served['matching']}")
        stub = matching_service_pb2_grpc.MatchingServiceStub(channel)
        await stub.DispatchOrder(
            matching_service_pb2.DispatchOrderRequest(order_id=order),
            metadata=bearer(service_token(SECRET, "order")),
        )
        await channel.close()

        async def offers() -> list[asyncpg.Record]:
            return await pool.fetch(
                "SELECT driver_id::text, status FROM driver_offers WHERE order_id = $1::uuid"
                " ORDER BY attempt",
                order,
            )

        async def first_offer_made() -> bool:
            return len(await offers()) == 1

        await eventually(first_offer_made)
        assert [tuple(r) for r in await offers()] == [(couriers[0], "pending")]
        matching.send_signal(signal.SIGKILL)
        await matching.wait()

        async def lapsed() -> bool:
            return bool(
                await pool.fetchval(
                    "SELECT bool_and(expires_at < now()) FROM driver_offers"
                    " WHERE order_id = $1::uuid",
                    order,
                )
            )

        # The offer's time runs out while nobody runs matching_svc.
        await eventually(lapsed)
        assert [tuple(r) for r in await offers()] == [(couriers[0], "pending")]
        matching, _ = await _start("matching_svc", store_settings, **matching_env)

        async def handed_on() -> bool:
            return [tuple(r) for r in await offers()] == [
                (couriers[0], "expired"),
                (couriers[1], "pending"),
            ]

        await eventually(handed_on)
    finally:
        for process in (matching, location):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.wait(), 30)
        pipe = redis.pipeline(transaction=False)
        for driver, shard in filed:
            index.queue_remove(pipe, driver, shard)
        await pipe.execute()
